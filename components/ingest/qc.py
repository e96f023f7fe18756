"""Ingestion QC: a slide thumbnail built band by band with kept voxels tinted, qc.md and ingest.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from histoxai import artifacts

_THUMB_MAX_SIDE = 1024  # px
_KEPT_TINT = np.array([0, 200, 60])
_DROPPED_TINT = np.array([230, 40, 40])  # inside the MR ROI but dropped by a later rule
_TINT_ALPHA = 0.4


class Thumbnail:
    """Grid area of the slide at a few pixels per voxel; `add_band` takes one voxel row's pixel band."""

    def __init__(self, grid: tuple[int, int], block: tuple[int, int]):
        rows, cols = grid
        self.per_voxel = int(np.clip(_THUMB_MAX_SIDE // max(rows, cols), 1, max(1, min(block))))
        self.block = block
        self.image = np.zeros((rows * self.per_voxel, cols * self.per_voxel, 3), np.uint8)

    def add_band(self, row: int, band: np.ndarray, kept: np.ndarray, dropped_in_roi: np.ndarray) -> None:
        from PIL import Image

        cols = len(kept)
        bh, bw = self.block
        t = self.per_voxel
        # subsample to about twice the target size first: cheap, and the box filter then anti-aliases
        sy, sx = max(1, bh // (2 * t)), max(1, bw // (2 * t))
        area = np.ascontiguousarray(band[:bh:sy, : cols * bw: sx])
        small = np.asarray(Image.fromarray(area).resize((cols * t, t), Image.Resampling.BOX), np.float64)
        for j in range(cols):
            tint = _KEPT_TINT if kept[j] else _DROPPED_TINT if dropped_in_roi[j] else None
            if tint is not None:
                cell = small[:, j * t:(j + 1) * t]
                cell[:] = (1 - _TINT_ALPHA) * cell + _TINT_ALPHA * tint
        self.image[row * t:(row + 1) * t] = np.clip(np.rint(small), 0, 255).astype(np.uint8)

    def save(self, path: Path) -> None:
        from PIL import Image

        Image.fromarray(self.image).save(path, format="PNG")


def value_ranges(frame, columns) -> dict[str, dict[str, float | None]]:
    """min / median / max of each column over the kept patches (None where all NaN)."""
    out = {}
    for name in columns:
        values = frame[name].to_numpy(np.float64)
        finite = values[np.isfinite(values)]
        out[name] = ({"min": None, "median": None, "max": None, "nan": int(len(values))} if not len(finite)
                     else {"min": float(finite.min()), "median": float(np.median(finite)),
                           "max": float(finite.max()), "nan": int(len(values) - len(finite))})
    return out


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def render_markdown(counts: dict, rule_text: dict[str, str]) -> str:
    """The per-sample QC report from the counts dict that ingest.json also holds."""
    grid, block, he = counts["grid"], counts["block_px"], counts["he_shape"]
    lines = [
        f"# Ingestion QC: sample `{counts['sample']}`", "",
        f"- Source: `{counts['sample_dir']}` (MAT versions: "
        + ", ".join(f"{Path(k).name} v{v}" for k, v in counts["mat_versions"].items()) + ")",
        f"- MR grid: {grid[0]} x {grid[1]} voxels; slide {he[0]} x {he[1]} px; "
        f"block {block[0]} x {block[1]} px per voxel (unused margin: "
        f"{he[0] - grid[0] * block[0]} rows, {he[1] - grid[1] * block[1]} columns)",
        f"- Patches: {counts['kept']} kept of {counts['voxels']} voxels, resized to "
        f"{counts['patch_size']} x {counts['patch_size']} px, encoded as {counts['encoding']}, "
        f"in {counts['shards']} shard(s)",
        f"- ROI erosion: {counts['erosion']} voxels; FAIP map "
        + ("present" if counts["faip_present"] else "absent (FAIP column is NaN)"),
        f"- Nuclei in the table: {counts['nuclei']['total']}, "
        f"inside the grid: {counts['nuclei']['in_grid']}; "
        f"max nuclei per voxel (the CD denominator): {counts['nuclei']['max_per_voxel']}",
        "", "## Voxels dropped, by the first rule they fail", "",
        "| rule | meaning | voxels |", "|---|---|---:|",
    ]
    for rule, n in counts["dropped"].items():
        lines.append(f"| {rule} | {rule_text[rule]} | {n} |")
    lines += [f"| **kept** | passed every rule | **{counts['kept']}** |", "",
              f"NaN-skipped voxels (passed the mask rules, target NaN): {counts['nan_skipped']}", "",
              "## Targets and features over the kept patches", "",
              "| column | min | median | max | NaN |", "|---|---:|---:|---:|---:|"]
    for name, r in counts["ranges"].items():
        lines.append(f"| {name} | {_fmt(r['min'])} | {_fmt(r['median'])} | {_fmt(r['max'])} | {r['nan']} |")
    lines += ["", "## Thumbnail", "",
              "Green: kept voxels. Red: inside the MR ROI but dropped by a later rule.", "",
              f"![thumbnail]({artifacts.QC_THUMBNAIL})", ""]
    return "\n".join(lines)


def write_report(folder: Path, counts: dict, rule_text: dict[str, str], thumbnail: Thumbnail) -> None:
    thumbnail.save(folder / artifacts.QC_THUMBNAIL)
    (folder / artifacts.QC_REPORT).write_text(render_markdown(counts, rule_text))
    (folder / artifacts.INGEST_INFO).write_text(json.dumps(counts, indent=2) + "\n")
