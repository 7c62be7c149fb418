"""Many images -> analysis -> tables: resumable, atomic, serial, local processes or Dask.

:func:`analyze_batch` (``exouptake analyze``) and :func:`segment_batch` (``exouptake segment``)
take image files, folders (searched recursively) and glob patterns. The package's modules, in the
order a run uses them: :mod:`.inputs` (files, folders, globs -> named inputs), :mod:`.sheets`
(sample sheets), :mod:`.checks` (arguments, memory limit, channels, model), :mod:`.lock` (the run
lock of ``OUT``), :mod:`.manifest` (part keys and the manifest), :mod:`.stacks` (series, time
points and planes of one file), :mod:`.work` (one file's part, in a worker), :mod:`.executors`
(serial, local processes, Dask), :mod:`.merge` (parts -> tables), :mod:`.publish` (atomic
results generations), :mod:`.run` (the batch itself); :mod:`.layout` names the files,
:mod:`.errors` the errors.

How a run is laid out on disk (``OUT`` = the ``--out`` folder)::

    OUT/parts/<file>/part.json            per input file: key, units, provenance (written last)
    OUT/parts/<file>/cells.parquet        cells of every unit of the file (no run-level columns)
    OUT/parts/<file>/spots.parquet
    OUT/parts/<file>/labels/<image>_cells.tif (+ _nuclei.tif)
    OUT/parts/<file>/qc/<image>_exo.npy   (EV plane; overlays are drawn at merge)
    OUT/manifest.jsonl                    one line per finished file (appended, fsync'ed)
    OUT/failures.csv                      image, path, error (only when something failed)
    OUT/exouptake.log                     log of every run on OUT (appended)
    OUT/{cells,spots,images}.{csv,parquet}, columns.md, labels/, qc/, run.json, report.html

Each part is written into a temporary folder and renamed into place, so a killed run leaves
whole parts or none. A part is reused when its key matches: the SHA-256 of the config sections
that change per-image numbers (everything but ``positivity`` and ``conditions``, which are
applied when the parts are merged), the input file's size and modification time, the label
files' size and time, and the part format. After the images, the run-level
:func:`~napari_exouptake.pipeline.finalize` (positivity thresholds over all cells) runs on the
parts sorted by image name and the merged tables are rewritten, so they are identical whatever
the history (interrupted, resumed, serial, processes or Dask).

Stacks: every series of a multi-series file (OME multi-image) and every time point is analysed
on its own; the image name gets ``_s<NN>`` (``[<scene>]`` for the named scenes of a CZI, ND2,
LIF or OME-Zarr file) / ``_t<NNN>`` suffixes (only for axes longer than one)
and the tables get ``source_image``, ``series`` and ``t`` columns. Z-stacks are analysed as
volumes, unless ``z_mode="planes"`` or the given labels are 2-D: then each plane is one image
(``_z<NNN>`` suffix, ``z`` column = plane index).
"""

from .checks import BYTES_PER_PIXEL, default_max_pixels
from .errors import BatchUsageError, MixedPartsError, OutputError, RunLockedError
from .inputs import InputFile, collect_inputs, is_output_folder
from .layout import PART_VERSION
from .lock import run_lock
from .manifest import analysis_hash
from .merge import merge_parts, refresh_report
from .run import BatchResult, analyze_batch, segment_batch
from .sheets import SHEET_KEYS, load_sample_sheet

__all__ = [
    "BYTES_PER_PIXEL",
    "BatchResult",
    "BatchUsageError",
    "InputFile",
    "MixedPartsError",
    "OutputError",
    "PART_VERSION",
    "RunLockedError",
    "SHEET_KEYS",
    "analysis_hash",
    "analyze_batch",
    "collect_inputs",
    "default_max_pixels",
    "is_output_folder",
    "load_sample_sheet",
    "merge_parts",
    "refresh_report",
    "run_lock",
    "segment_batch",
]
