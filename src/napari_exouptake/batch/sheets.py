"""Sample sheets: image name or glob pattern -> condition, dose, replicate, well ..."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import BatchUsageError

__all__ = ["SHEET_KEYS", "load_sample_sheet"]

#: Sample-sheet columns that name the image (first one present wins).
SHEET_KEYS = ("image", "pattern", "file")


def load_sample_sheet(path: str | Path) -> pd.DataFrame:
    """Read a sample sheet: image name or glob pattern -> condition, dose, replicate, well ...

    Parameters
    ----------
    path : str or Path
        CSV with a key column ``image`` (or ``pattern`` / ``file``): an image name, file name,
        relative path or a glob pattern (``plate1/*_A0?``); and any of ``condition``, ``dose``
        (number, e.g. ug/mL), ``replicate``, ``well`` and further columns, which are all copied
        into the cells and images tables. The first matching row wins. The simulator's
        ``conditions.csv`` is a valid sample sheet.

    Returns
    -------
    pandas.DataFrame
        With the key column renamed ``pattern``.

    Raises
    ------
    BatchUsageError
        Missing file, no key column, an empty sheet or a non-numeric ``dose``.
    """
    path = Path(path)
    if not path.is_file():
        raise BatchUsageError(f"sample sheet {str(path)!r} does not exist")
    try:
        sheet = pd.read_csv(path, dtype=dict.fromkeys((*SHEET_KEYS, "condition", "well"), str))
    except Exception as exc:
        raise BatchUsageError(f"sample sheet {path}: cannot read it as CSV ({exc})") from None
    sheet.columns = [str(c).strip() for c in sheet.columns]
    key = next((k for k in SHEET_KEYS if k in sheet.columns), None)
    if key is None:
        raise BatchUsageError(
            f"sample sheet {path}: needs a column naming the images ({', '.join(SHEET_KEYS)}); "
            f"it has {', '.join(sheet.columns)}"
        )
    if sheet.empty:
        raise BatchUsageError(f"sample sheet {path}: has no rows")
    sheet = sheet.drop(columns=[k for k in SHEET_KEYS if k in sheet.columns and k != key])
    sheet = sheet.rename(columns={key: "pattern"})
    if sheet["pattern"].isna().any():
        row = int(np.flatnonzero(sheet["pattern"].isna().to_numpy())[0]) + 2
        raise BatchUsageError(f"sample sheet {path}: line {row} has an empty {key!r}")
    if "dose" in sheet.columns:
        dose = pd.to_numeric(sheet["dose"], errors="coerce")
        bad = dose.isna() & sheet["dose"].notna()
        if bad.any():
            raise BatchUsageError(
                f"sample sheet {path}: dose {sheet['dose'][bad].iloc[0]!r} is not a number "
                "(give the unit in a dose_unit column)"
            )
        sheet["dose"] = dose.astype(float)
    return sheet.reset_index(drop=True)


def _sheet_row(sheet: pd.DataFrame | None, candidates: Sequence[str]) -> dict[str, Any]:
    """Metadata of the first sheet row whose pattern matches one of ``candidates``."""
    if sheet is None:
        return {}
    for row in sheet.itertuples(index=False):  # rows of a sheet, not cells
        pattern = str(row.pattern)
        if any(c == pattern or fnmatch.fnmatchcase(c, pattern) for c in candidates):
            return {k: v for k, v in row._asdict().items() if k != "pattern"}
    return {}
