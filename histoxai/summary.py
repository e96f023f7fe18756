"""Open the Brabec et al. (2023) summary.mat (bundled, or any copy): one cell per sample in each variable."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from histoxai import storage
from histoxai.errors import InputError

BUNDLED_SUMMARY = Path(__file__).resolve().parent / "data" / "brabec2023" / "summary.mat"


class SummaryFile:
    """The variables of a summary.mat (MATLAB v5), with errors that name the file and variable."""

    def __init__(self, uri: str | os.PathLike | None = None):
        import scipy.io

        self.label = "bundled brabec2023/summary.mat" if uri is None else str(uri)
        with storage.local_copy(BUNDLED_SUMMARY if uri is None else uri) as path:
            if path.is_dir():
                raise InputError(f"{self.label}: is a folder; expected the summary.mat file")
            self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
            try:
                self._mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
            except Exception as err:  # scipy raises several types for a damaged, foreign or v7.3 file
                raise InputError(f"{self.label}: not a readable MATLAB v5 summary.mat "
                                 f"({type(err).__name__}: {err})") from err

    def variables(self) -> list[str]:
        return [k for k in self._mat if not k.startswith("__")]

    def cells(self, name: str, expected: str = "") -> list:
        """The cells of a variable, sample n at index n-1."""
        if name not in self._mat:
            raise InputError(f"{self.label}: variable '{name}' missing (found: {', '.join(self.variables())})"
                             + (f"; expected {expected}" if expected else ""))
        value = self._mat[name]
        if isinstance(value, np.ndarray) and value.dtype == object:
            return list(value.ravel())
        return [value]  # a one-cell array comes back squeezed to its content

    def field(self, cell, name: str, where: str) -> np.ndarray:
        """A struct cell's field as an array; `where` names the cell, e.g. 'sMR{3}'."""
        if not hasattr(cell, "_fieldnames") or name not in cell._fieldnames:
            raise InputError(f"{self.label}: {where} lacks field '{name}'; expected a struct with it")
        return np.asarray(getattr(cell, name))
