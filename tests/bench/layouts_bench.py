"""Ingestion time and peak memory per HE.mat/HE_mask.mat storage layout (histoxai.matlayout): the
phantom's voxel-row chunks, MATLAB's default (gzip, automatic chunks), gzip tiles, gzip whole-height
strips and contiguous, on the real-scale slide (80 x 80 voxels at 360 px, 28,800 px square)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tests.bench.common import real_scale_phantom, run_measured


def _histoxai(*args: str) -> list[str]:
    return [sys.executable, "-m", "histoxai.cli", *args]


def bench_layouts(work: Path, crop: str = "80x80", pixels_per_voxel: int = 360) -> dict:
    from histoxai import layout
    from histoxai.matlayout import LAYOUTS, relayout

    work.mkdir(parents=True, exist_ok=True)
    figures = {}
    try:
        if (crop, pixels_per_voxel) == ("80x80", 360):
            source, phantom = real_scale_phantom(work)
        else:
            phantom = run_measured(_histoxai("phantom", "--out", str(work / "phantom"), "--samples", "3",
                                             "--crop", crop, "--pixels-per-voxel", str(pixels_per_voxel)))
            source = work / "phantom" / "3"
        for name in LAYOUTS:
            folder = source if name == "rows" else work / name / "3"
            if name != "rows":
                shutil.copytree(source, folder, ignore=shutil.ignore_patterns("*.mat"))
                shutil.copy(source / layout.MR_MAT, folder / layout.MR_MAT)
                for rel in (layout.HE_MAT, layout.HE_MASK_MAT):
                    relayout(source / rel, folder / rel, name)
            out = work / f"ingest-{name}"
            ingest = run_measured(_histoxai("ingest", str(folder), "--out", str(out), "--patch-size",
                                            str(pixels_per_voxel)))
            counts = json.loads((out / "ingest.json").read_text())
            figures[name] = {**ingest, "patches": counts["kept"],
                             "he_mat_mib": (folder / layout.HE_MAT).stat().st_size / 2**20,
                             "read_wall_s": counts["timing"]["wall_s"].get("read")}
            shutil.rmtree(out, ignore_errors=True)
            if name != "rows":
                shutil.rmtree(folder.parent, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"case": f"sample 3, {crop} voxels at {pixels_per_voxel} px per voxel, patches "
                    f"{pixels_per_voxel} px, default encoding; HE.mat and HE_mask.mat re-stored per layout",
            "phantom_render": phantom, "ingest_per_layout": figures}
