"""Load one sample's real per-voxel maps (MR, cell density, structure tensor) from summary.mat."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from histoxai.errors import InputError
from histoxai.summary import SummaryFile

MR_FIELDS = ("MD", "FA", "FAIP", "ROI", "J_11", "J_12", "J_22")
HISTO_FIELDS = ("dJ_11", "dJ_12", "dJ_22", "dSA")


@dataclass(frozen=True)
class SampleMaps:
    """One sample's maps on its MR grid (rows x cols), as float64 arrays.

    mr: the MR struct's fields (MD is 0 outside tissue); cd: nuclei count / the sample's max
    (NaN -> 0); dj11, dj12, dj22: histology structure tensor per voxel (1 = image x = column,
    2 = image y = row, as in the original study's get_J_from_histo.m); dsa: structure anisotropy.
    """

    sample: int
    mr: dict[str, np.ndarray]
    cd: np.ndarray
    dj11: np.ndarray
    dj12: np.ndarray
    dj22: np.ndarray
    dsa: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.cd.shape

    @property
    def tissue(self) -> np.ndarray:
        """Voxels holding tissue: MD > 0 or inside the ROI."""
        return (np.nan_to_num(self.mr["MD"]) > 0) | (np.nan_to_num(self.mr["ROI"]) > 0)

    def cropped(self, rows: int, cols: int) -> SampleMaps:
        """The top-left rows x cols voxels (clamped to the grid)."""
        rows, cols = min(rows, self.shape[0]), min(cols, self.shape[1])
        cut = (slice(0, rows), slice(0, cols))
        return replace(
            self, mr={k: v[cut] for k, v in self.mr.items()}, cd=self.cd[cut], dj11=self.dj11[cut],
            dj12=self.dj12[cut], dj22=self.dj22[cut], dsa=self.dsa[cut],
        )


class Summary:
    """The samples of summary.mat (sample n is cell n-1 of each variable)."""

    def __init__(self, uri: str | os.PathLike | None = None):
        self._file = SummaryFile(uri)
        self.label, self.sha256 = self._file.label, self._file.sha256
        expected = "sMR, sCD and sHd (the summary.mat of Brabec et al. 2023)"
        self._cells = {name: self._file.cells(name, expected) for name in ("sMR", "sCD", "sHd")}
        self.n_samples = len(self._cells["sCD"])

    def sample(self, sample: int) -> SampleMaps:
        if not 1 <= sample <= self.n_samples:
            raise InputError(f"{self.label}: sample {sample} does not exist; "
                             f"expected a sample number from 1 to {self.n_samples}")
        mr_struct, histo = self._cells["sMR"][sample - 1], self._cells["sHd"][sample - 1]
        mr = {f: self._file.field(mr_struct, f, f"sMR{{{sample}}}").astype(np.float64) for f in MR_FIELDS}
        cd = np.nan_to_num(np.asarray(self._cells["sCD"][sample - 1], dtype=np.float64), nan=0.0)
        dj = {f: self._file.field(histo, f, f"sHd{{{sample}}}").astype(np.float64) for f in HISTO_FIELDS}
        shape = mr["MD"].shape
        arrays = {**{f"sMR.{k}": v for k, v in mr.items()}, "sCD": cd,
                  **{f"sHd.{k}": v for k, v in dj.items()}}
        for label, array in arrays.items():
            if array.ndim != 2 or array.shape != shape:
                raise InputError(f"{self.label}: sample {sample}: {label} has shape {array.shape}; "
                                 f"expected the MR grid shape {shape}")
        return SampleMaps(sample=sample, mr=mr, cd=cd, dj11=dj["dJ_11"], dj12=dj["dJ_12"],
                          dj22=dj["dJ_22"], dsa=dj["dSA"])


def load_summary(uri: str | os.PathLike | None = None) -> Summary:
    """Open summary.mat (local or gs://); None means the copy bundled with the package."""
    return Summary(uri)
