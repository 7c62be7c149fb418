"""Bodies of the ``exouptake`` subcommands, one module per command.

:mod:`napari_exouptake.cli` parses the command line and dispatches here; these modules
print and return exit codes. No core module imports this package.
"""
