"""Ingestion benchmark: a real-scale slide (80 x 80 voxels at 360 px, 28,800 px square) through
phantom and ingest (default encoding on every core, on one core, and PNG for the ratio). The shard
reader of these patches is the `reader` section (reader_bench.py)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tests.bench.common import real_scale_phantom, run_measured


def _histoxai(*args: str) -> list[str]:
    return [sys.executable, "-m", "histoxai.cli", *args]


def bench_ingest(work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    try:
        sample, phantom = real_scale_phantom(work)
        runs = {}
        for name, prefix, extra in (("ingest", [], []), ("ingest_1_core", ["taskset", "-c", "0"], []),
                                    ("ingest_png", [], ["--encoding", "png"])):
            out = work / name
            runs[name] = run_measured(prefix + _histoxai("ingest", sample, "--out", str(out),
                                                         "--patch-size", "360", *extra))
            counts = json.loads((out / "ingest.json").read_text())
            # per second of the whole command, and of the step alone (without Python's and h5py's start)
            runs[name].update(patches=counts["kept"], patches_per_s=counts["kept"] / runs[name]["wall_s"],
                              patches_per_s_in_step=counts["kept"] / counts["timing"]["wall_s"]["total"],
                              encoding=counts["encoding"], timing=counts["timing"],
                              bytes_per_patch=sum(p.stat().st_size for p in out.glob("shards/*"))
                              / counts["kept"])
            if name != "ingest":
                shutil.rmtree(out)
        runs["speedup_2_cores_over_1"] = runs["ingest_1_core"]["wall_s"] / runs["ingest"]["wall_s"]
        runs["speedup_over_png"] = runs["ingest_png"]["wall_s"] / runs["ingest"]["wall_s"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"case": "sample 3, 80 x 80 voxels at 360 px per voxel (28,800 px square slide), patches 360 px",
            "phantom_render": phantom, **runs}
