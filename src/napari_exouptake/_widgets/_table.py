"""Embedded per-cell table: one row per cell, linked both ways to a Labels layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem

__all__ = ["CellTable"]


class _NumItem(QTableWidgetItem):
    """Table item that sorts by its number, not its text."""

    def __init__(self, text: str, value: float) -> None:
        super().__init__(text)
        self._value = value

    def __lt__(self, other: QTableWidgetItem) -> bool:  # noqa: D105
        if isinstance(other, _NumItem):
            return self._value < other._value
        return super().__lt__(other)


def _fmt(v: Any) -> tuple[str, float | None]:
    if isinstance(v, (bool, np.bool_)):
        return ("yes" if v else "no"), float(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v)), float(v)
    if isinstance(v, (float, np.floating)):
        return ("" if not np.isfinite(v) else f"{float(v):.4g}"), float(v)
    return str(v), None


class CellTable(QTableWidget):
    """Read-only table of a per-cell DataFrame.

    Signals
    -------
    cell_clicked(int)
        ``cell_id`` of the row the user selected.
    """

    cell_clicked = Signal(int)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        self.setSortingEnabled(True)
        self.verticalHeader().setVisible(False)
        self._ids = np.zeros(0, dtype=np.int64)
        self._columns: list[str] = []
        self._silent = False
        self.itemSelectionChanged.connect(self._on_selection)

    # -- content -----------------------------------------------------------------------------
    def set_table(
        self,
        df: pd.DataFrame | None,
        order: list[str] | None = None,
        names: dict[str, str] | None = None,
    ) -> None:
        """Show ``df`` (must have ``cell_id``); None clears the table.

        ``order``: columns shown first (``cell_id`` must lead); ``names``: header text per
        column (the column name stays the header's tooltip and key).
        """
        self._silent = True
        try:
            self.setSortingEnabled(False)
            self.clear()
            if df is None or len(df.columns) == 0:
                self.setRowCount(0)
                self.setColumnCount(0)
                self._ids = np.zeros(0, dtype=np.int64)
                self._columns = []
                return
            cols = [c for c in df.columns if c not in ("index", "image", "condition")]
            first = [c for c in (order or ["cell_id"]) if c in cols]
            cols = first + [c for c in cols if c not in first]
            self.setColumnCount(len(cols))
            self.setRowCount(len(df))
            self._columns = cols
            for c, col in enumerate(cols):
                head = QTableWidgetItem((names or {}).get(col, col))
                head.setToolTip(col)
                self.setHorizontalHeaderItem(c, head)
            self._ids = df["cell_id"].to_numpy(dtype=np.int64)
            values = df[cols].to_numpy(dtype=object)
            for r in range(values.shape[0]):
                for c in range(values.shape[1]):
                    text, num = _fmt(values[r, c])
                    item = _NumItem(text, num) if num is not None else QTableWidgetItem(text)
                    if c == 0:
                        item.setData(Qt.UserRole, int(self._ids[r]))
                    self.setItem(r, c, item)
            self.setSortingEnabled(True)
            self.resizeColumnsToContents()
        finally:
            self._silent = False

    def update_column(self, column: str, values: np.ndarray) -> None:
        """Refresh one column (e.g. ``exo_positive`` after a new threshold), rows by cell_id."""
        if column not in self._columns:
            return
        col = self._columns.index(column)
        by_id = dict(zip(self._ids.tolist(), np.asarray(values).tolist(), strict=True))
        self.setSortingEnabled(False)
        for r in range(self.rowCount()):
            cid = self.row_cell_id(r)
            text, num = _fmt(by_id.get(cid))
            item = _NumItem(text, num) if num is not None else QTableWidgetItem(text)
            self.setItem(r, col, item)
        self.setSortingEnabled(True)

    # -- linking -----------------------------------------------------------------------------
    def row_cell_id(self, row: int) -> int | None:
        """``cell_id`` shown in ``row`` (after any sorting)."""
        item = self.item(row, 0)
        return None if item is None else int(item.data(Qt.UserRole))

    def row_of(self, cell_id: int) -> int | None:
        for r in range(self.rowCount()):
            if self.row_cell_id(r) == cell_id:
                return r
        return None

    def select_cell(self, cell_id: int) -> None:
        """Select and show the row of ``cell_id`` without emitting :attr:`cell_clicked`."""
        row = self.row_of(int(cell_id))
        self._silent = True
        try:
            if row is None:
                self.clearSelection()
            else:
                self.selectRow(row)
                self.scrollToItem(self.item(row, 0))
        finally:
            self._silent = False

    def selected_cell(self) -> int | None:
        rows = {i.row() for i in self.selectedItems()}
        return self.row_cell_id(min(rows)) if rows else None

    def _on_selection(self) -> None:
        if self._silent:
            return
        cid = self.selected_cell()
        if cid is not None:
            self.cell_clicked.emit(cid)
