"""The table of cell measurements in the Segment cells dock: sortable, a click selects a cell.

Columns are those of :func:`unetsl.cells.measure.measure` (the CSV that segment_cells
writes); numbers sort as numbers, not as text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QTableWidget, QTableWidgetItem

#: the power of the unit each measurement carries (1 length, 2 area, 3 volume)
UNIT_POWERS = {"centroid_z": 1, "centroid_y": 1, "centroid_x": 1, "perimeter": 1,
               "equivalent_diameter": 1, "major_axis_length": 1, "minor_axis_length": 1,
               "area": 2, "surface_area": 2, "volume": 3}
SYMBOLS = {"micron": "µm", "micrometer": "µm", "um": "µm", "nanometer": "nm",
           "millimeter": "mm"}


def header(key: str, unit: str) -> str:
    """A column's title with its unit ("area (µm²)"); t says it counts from 0 (ImageJ ROI
    positions count from 1)."""
    if key == "t":
        return "t (from 0)"
    power = UNIT_POWERS.get(key)
    if power is None:
        return key
    symbol = SYMBOLS.get(unit, unit)
    return f"{key} ({symbol}{'' if power == 1 else '²' if power == 2 else '³'})"


class CellsTable(QTableWidget):
    """One row per cell per time point; ``on_select(cell id, t)`` when a row is clicked."""

    def __init__(self, on_select: Callable[[int, int], None] | None = None):
        super().__init__()
        self.on_select = on_select
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSortingEnabled(True)
        self.setMinimumHeight(160)
        self.columns: list[str] = []
        self.itemSelectionChanged.connect(self._selected)

    def set_table(self, table: Mapping[str, np.ndarray], unit: str = "pixel") -> None:
        """Show ``table`` (columns of equal length, lengths in ``unit``) in place of what
        was shown."""
        self.setSortingEnabled(False)  # or rows move while they are filled
        self.clear()
        self.columns = list(table)
        n_rows = len(next(iter(table.values()))) if table else 0
        self.setColumnCount(len(self.columns))
        self.setRowCount(n_rows)
        self.setHorizontalHeaderLabels([header(key, unit) for key in self.columns])
        for col, key in enumerate(self.columns):
            values = np.asarray(table[key])
            integer = np.issubdtype(values.dtype, np.integer)
            for row, value in enumerate(values.tolist()):
                item = QTableWidgetItem()
                shown = int(value) if integer else round(float(value), 4)
                item.setData(Qt.ItemDataRole.DisplayRole, shown)
                self.setItem(row, col, item)
        self.setSortingEnabled(True)
        self.resizeColumnsToContents()

    def row_values(self, row: int) -> dict[str, float]:
        """The numbers shown in ``row`` (as sorted now), by column name."""
        return {key: float(self.item(row, col).data(Qt.ItemDataRole.DisplayRole))
                for col, key in enumerate(self.columns)}

    def select_row(self, row: int) -> None:
        """Select ``row`` as a click does (and tell ``on_select``)."""
        self.selectRow(row)

    def _selected(self) -> None:
        rows = {index.row() for index in self.selectedIndexes()}
        if len(rows) != 1 or self.on_select is None or "id" not in self.columns:
            return
        values = self.row_values(rows.pop())
        self.on_select(int(values["id"]), int(values.get("t", 0)))
