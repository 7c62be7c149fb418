"""Shareable, verifiable dataset bundles (``exouptake dataset pack/verify/validate/fetch``).

A bundle is a folder, or a ``.zip`` of that folder's contents, laid out as (see
``docs/datasets.md``)::

    dataset.yaml            what it is: name, description, licence, authors, channel roles, pixel
                            size, the assay config, how the reference was analysed, the software
                            that made it, tolerances per metric
    checksums.sha256        SHA-256 of every other file, ``sha256sum -c`` format
    config.yaml             the same assay config as a file (for ``exouptake analyze --config``)
    images/<name>.ome.tif   the images, OME-TIFF with channel names and pixel size
    labels/<name>_cells.tif, labels/<name>_nuclei.tif     optional ground-truth labels
    truth_spots.csv, truth_cells.csv                      optional ground-truth puncta / counts
    conditions.csv, README.md, LICENSE*                   optional
    analysis_labels/<name>_cells.tif                      optional labels the analysis used
    reference/              optional reference results: cells.csv, images.csv, spots.csv,
                            run.json (+ labels/ when the reference segmented)

Opening a bundle never writes outside its target folder and never executes anything: zip
members with absolute paths, ``..``, backslashes, links or special files, encrypted members, too
many or too large members are refused before anything is extracted; ``dataset.yaml`` is read with
``yaml.safe_load``; a folder bundle containing a symbolic link fails verification.

Modules
-------
schema
    format constants, :class:`DatasetError`, ``dataset.yaml`` loading and its schema.
safety
    checksums (:func:`compute_checksums`, :func:`write_checksums`), :func:`safe_extract` and
    its limits, deterministic zip writing.
bundle
    :class:`Bundle`, :func:`open_bundle`, :func:`read_bundle`, :func:`verify_bundle`,
    :func:`analyze_bundle`, :func:`validate_bundle`.
pack
    :func:`pack_bundle`, :func:`write_bundle_metadata`.
fetch
    :func:`fetch_bundle` (download, hash check, cache).

Every public name is importable from ``napari_exouptake.datasets``.
"""

from __future__ import annotations

from .bundle import (
    Bundle,
    BundleValidation,
    analyze_bundle,
    open_bundle,
    read_bundle,
    validate_bundle,
    verify_bundle,
)
from .fetch import MAX_DOWNLOAD_BYTES, fetch_bundle
from .pack import pack_bundle, write_bundle_metadata
from .safety import (
    MAX_MEMBER_BYTES,
    MAX_MEMBERS,
    MAX_RATIO,
    MAX_TOTAL_BYTES,
    RATIO_MIN_BYTES,
    compute_checksums,
    safe_extract,
    write_checksums,
)
from .schema import (
    ANALYSIS_LABELS_DIR,
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    CHECKSUM_FILE,
    IMAGE_SUFFIXES,
    MAX_TEXT_BYTES,
    METADATA_FILE,
    REFERENCE_DIR,
    DatasetError,
)

# isort: split
# A private name tests read through the package (patch it in ``datasets.safety``).
from .safety import _write_zip as _write_zip

__all__ = [
    "ANALYSIS_LABELS_DIR",
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "CHECKSUM_FILE",
    "IMAGE_SUFFIXES",
    "MAX_DOWNLOAD_BYTES",
    "MAX_MEMBERS",
    "MAX_MEMBER_BYTES",
    "MAX_RATIO",
    "MAX_TEXT_BYTES",
    "MAX_TOTAL_BYTES",
    "METADATA_FILE",
    "RATIO_MIN_BYTES",
    "REFERENCE_DIR",
    "Bundle",
    "BundleValidation",
    "DatasetError",
    "analyze_bundle",
    "compute_checksums",
    "fetch_bundle",
    "open_bundle",
    "pack_bundle",
    "read_bundle",
    "safe_extract",
    "validate_bundle",
    "verify_bundle",
    "write_bundle_metadata",
    "write_checksums",
]
