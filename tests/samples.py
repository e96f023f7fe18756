"""Small hand-made samples in the dataset layout (histoxai/layout.py), written with histoxai.matfile.

`make_sample` draws the arrays (the truth a test compares against), `write_sample` writes them as a
sample folder in MATLAB v7.3 or v5. The slide has pink tissue with purple elliptical nuclei (aligned
on the left, random on the right), a white background corner outside the tissue mask, a few
single-pixel mask holes, NaN targets at some ROI voxels, and nuclei centroids exactly on block edges
and outside the grid, so every ingestion rule has something to do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from histoxai import layout
from histoxai.matfile import MatWriterV73, write_v5

TISSUE_RGB = (225, 160, 195)
NUCLEUS_RGB = (110, 55, 150)
BACKGROUND_RGB = (246, 244, 247)


@dataclass
class SampleArrays:
    md: np.ndarray
    fa: np.ndarray
    faip: np.ndarray | None  # None: the MR struct has no FAIP field
    roi: np.ndarray
    dhe_mask: np.ndarray
    he: np.ndarray  # uint8 H x W x 3
    he_mask: np.ndarray  # bool H x W
    centroids: np.ndarray  # (n, 2): x = column, y = row

    @property
    def grid(self) -> tuple[int, int]:
        return self.md.shape

    @property
    def block(self) -> tuple[int, int]:
        return self.he.shape[0] // self.grid[0], self.he.shape[1] // self.grid[1]

    def with_(self, **changes) -> SampleArrays:
        return replace(self, **changes)


def _draw_nuclei(he: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Paint `count` elliptical nuclei; returns their centres (x, y)."""
    height, width = he.shape[:2]
    centres = np.column_stack([rng.uniform(0, width, count), rng.uniform(0, height, count)])
    for x, y in centres:
        aligned = x < width / 2
        angle = 0.6 if aligned else rng.uniform(0, np.pi)
        a, b = (4.5, 1.8) if aligned else rng.uniform(1.8, 3.5, 2)
        r = int(np.ceil(max(a, b))) + 1
        y0, y1 = max(0, int(y) - r), min(height, int(y) + r + 1)
        x0, x1 = max(0, int(x) - r), min(width, int(x) + r + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        u = (xx - x) * np.cos(angle) + (yy - y) * np.sin(angle)
        v = -(xx - x) * np.sin(angle) + (yy - y) * np.cos(angle)
        he[y0:y1, x0:x1][(u / a) ** 2 + (v / b) ** 2 <= 1] = NUCLEUS_RGB
    return centres


def make_sample(rows: int = 12, cols: int = 14, block: tuple[int, int] = (18, 20),
                margin: tuple[int, int] = (5, 3), *, seed: int = 0, faip: bool = True,
                nuclei_per_voxel: float = 3.0) -> SampleArrays:
    """A sample whose slide is (rows * bh + margin[0]) x (cols * bw + margin[1]) px."""
    rng = np.random.default_rng(seed)
    bh, bw = block
    height, width = rows * bh + margin[0], cols * bw + margin[1]
    yy, xx = np.mgrid[:rows, :cols]
    roi = (((yy - (rows - 1) / 2) / (0.55 * rows)) ** 2 + ((xx - (cols - 1) / 2) / (0.55 * cols)) ** 2 <= 1)
    md = 0.8 + 0.05 * yy + 0.03 * xx + rng.normal(0, 0.02, (rows, cols))
    fa = np.clip(0.2 + 0.02 * xx + rng.normal(0, 0.01, (rows, cols)), 0, 1)
    faip_map = np.clip(fa * 1.1, 0, 1) if faip else None
    inside = np.argwhere(roi)
    for r, c in inside[rng.choice(len(inside), 3, replace=False)]:
        md[r, c] = np.nan  # NaN targets inside the ROI: skipped and counted

    he = np.empty((height, width, 3), np.uint8)
    he[:] = TISSUE_RGB
    centres = _draw_nuclei(he, rng, int(nuclei_per_voxel * rows * cols))
    py, px = np.mgrid[:height, :width]
    he_mask = ((py / (2.6 * bh)) ** 2 + (px / (3.2 * bw)) ** 2) > 1  # a background corner, top left
    he[~he_mask] = BACKGROUND_RGB
    holes = rng.choice(rows * cols, 4, replace=False)  # single-pixel holes: he_mask rule drops the block
    for k in holes:
        he_mask[(k // cols) * bh + bh // 2, (k % cols) * bw + bw // 3] = False
    noise = rng.normal(0, 6, he.shape)
    he = np.clip(he + noise, 0, 255).astype(np.uint8)

    covered = he_mask[: rows * bh, : cols * bw].reshape(rows, bh, cols, bw).mean(axis=(1, 3))
    dhe_mask = (covered > 0.5).astype(np.float64)
    dhe_mask[rng.integers(0, rows, 2), rng.integers(0, cols, 2)] = 0

    edge_cases = np.array([[bw, bh], [2 * bw - 1e-9, 3 * bh], [0.0, 0.0], [cols * bw - 0.5, rows * bh - 0.5],
                           [cols * bw, 5.0], [7.0, rows * bh], [width - 0.5, height - 0.5], [-0.5, 4.0]])
    centroids = np.concatenate([centres, edge_cases])
    return SampleArrays(md=md, fa=fa, faip=faip_map, roi=roi.astype(np.float64), dhe_mask=dhe_mask,
                        he=he, he_mask=he_mask, centroids=centroids)


def write_tsv(path: Path, centroids: np.ndarray, *, extra_columns: bool = True) -> None:
    """A QuPath-like measurements table (centroids in px, plus unrelated columns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (["Image", "Name", "Class"] if extra_columns else []) + [layout.CENTROID_X, layout.CENTROID_Y]
    if extra_columns:
        header.append("Nucleus: Area µm^2")
    lines = ["\t".join(header)]
    for n, (x, y) in enumerate(centroids):
        fields = ["HE.tif", f"PathDetectionObject {n}", "Tumor"] if extra_columns else []
        fields += [repr(float(x)), repr(float(y))]
        if extra_columns:
            fields.append(f"{20 + n % 7:.2f}")
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_sample(folder: str | Path, arrays: SampleArrays, *, mat_format: str = "7.3") -> Path:
    """Write the sample folder (MAT files in v7.3 or v5) and return its path."""
    folder = Path(folder)
    for rel in (layout.MR_MAT, layout.NUCLEI_TSV):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    mr = {"MD": arrays.md, "FA": arrays.fa, "ROI": arrays.roi}
    if arrays.faip is not None:
        mr["FAIP"] = arrays.faip
    if mat_format == "7.3":
        with MatWriterV73(folder / layout.MR_MAT) as mat:
            mat.write_struct("MR", mr)
        with MatWriterV73(folder / layout.HE_MAT) as mat:
            mat.write("HE", arrays.he)
        with MatWriterV73(folder / layout.HE_MASK_MAT) as mat:
            mat.write("HE_mask", arrays.he_mask)
            mat.write("dHE_mask", arrays.dhe_mask)
    elif mat_format == "5":
        write_v5(folder / layout.MR_MAT, {"MR": mr})
        write_v5(folder / layout.HE_MAT, {"HE": arrays.he})
        write_v5(folder / layout.HE_MASK_MAT, {"HE_mask": arrays.he_mask, "dHE_mask": arrays.dhe_mask})
    else:
        raise ValueError(f"mat_format {mat_format!r}: expected '7.3' or '5'")
    write_tsv(folder / layout.NUCLEI_TSV, arrays.centroids)
    return folder
