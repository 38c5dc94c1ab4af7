"""The view both lazily read per-image columns share (text_columns.py, code_columns.py).

A prepared split's column is backed by memory-mapped files holding every image of the split; a
subset (a task's 1% prefix, a shuffled order) is the same backing with other `indices`, so taking
one copies nothing and reads nothing.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

import numpy as np


class IndexedColumn(Sequence):
    """A read-only column: item i is backing row `indices[i]`, read by the subclass's `_row`."""

    indices: np.ndarray

    @abstractmethod
    def _row(self, j: int):
        """Backing row `j` as the column's value."""

    def take(self, indices: Sequence[int] | np.ndarray) -> IndexedColumn:
        """The same column restricted to `indices` (positions in this column)."""
        view = type(self).__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.indices = self.indices[np.asarray(indices, np.int64)]
        return view

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._row(int(self.indices[i]))
