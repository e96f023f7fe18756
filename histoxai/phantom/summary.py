"""Load one sample's real per-voxel maps (MR, cell density, structure tensor) from summary.mat."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from histoxai import storage
from histoxai.errors import InputError

BUNDLED_SUMMARY = Path(__file__).resolve().parents[1] / "data" / "brabec2023" / "summary.mat"
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
    """The 16 samples of summary.mat (sample n is cell n-1 of each variable)."""

    def __init__(self, path: Path, label: str):
        self.label = label
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        import scipy.io

        try:
            self._mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        except Exception as err:  # scipy raises several types for a damaged or foreign file
            raise InputError(f"{label}: not a readable MATLAB v5 summary.mat ({err})") from err
        for name in ("sMR", "sCD", "sHd"):
            if name not in self._mat:
                raise InputError(f"{label}: variable '{name}' missing; expected sMR, sCD and sHd "
                                 "(the summary.mat of Brabec et al. 2023)")
        self.n_samples = int(np.size(self._mat["sCD"]))

    def _cell(self, name: str, sample: int):
        return np.atleast_1d(self._mat[name])[sample - 1]

    def _field(self, name: str, struct, field: str, sample: int) -> np.ndarray:
        if not hasattr(struct, field):
            raise InputError(f"{self.label}: sample {sample}: field {name}.{field} missing")
        return np.asarray(getattr(struct, field), dtype=np.float64)

    def sample(self, sample: int) -> SampleMaps:
        if not 1 <= sample <= self.n_samples:
            raise InputError(f"{self.label}: sample {sample} does not exist; "
                             f"expected a sample number from 1 to {self.n_samples}")
        mr_struct, histo = self._cell("sMR", sample), self._cell("sHd", sample)
        mr = {f: self._field("sMR", mr_struct, f, sample) for f in MR_FIELDS}
        cd = np.nan_to_num(np.asarray(self._cell("sCD", sample), dtype=np.float64), nan=0.0)
        dj = {f: self._field("sHd", histo, f, sample) for f in HISTO_FIELDS}
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
    if uri is None:
        return Summary(BUNDLED_SUMMARY, "bundled brabec2023/summary.mat")
    with storage.local_copy(uri) as path:
        if path.is_dir():
            raise InputError(f"{uri}: is a folder; expected the summary.mat file")
        return Summary(path, str(uri))
