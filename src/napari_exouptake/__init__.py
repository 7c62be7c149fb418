"""napari-exouptake: exosome uptake, angiogenesis and collagen readouts for EV-therapy assays.

The package import is light: it never imports Qt, napari or torch. Heavy modules
(:mod:`~napari_exouptake.segmentation`, the widgets) import them inside their functions.
"""

from ._version import __version__
from .config import AssayConfig, ConfigError, load_config, save_config

__all__ = ["AssayConfig", "ConfigError", "__version__", "load_config", "save_config"]
