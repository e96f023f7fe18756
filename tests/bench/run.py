"""`make bench`: run the benchmarks and write their figures to OUT/results.json and OUT/results.md.

Figures come from one run on one device (named in the results); compare ratios within a run.
Select parts with --only (default: all).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from histoxai.provenance import stamp
from tests.bench.common import REAL_SCALE_FOLDER


def _sections():
    from tests.bench.app_bench import bench_app
    from tests.bench.explain_bench import bench_explain
    from tests.bench.ingest_bench import bench_ingest
    from tests.bench.layouts_bench import bench_layouts
    from tests.bench.predict import bench_predict
    from tests.bench.reader_bench import bench_reader
    from tests.bench.scale_model import bench_scale
    from tests.bench.train_bench import bench_training

    return {"ingest": bench_ingest, "reader": bench_reader, "layouts": bench_layouts,
            "training": bench_training, "explain": bench_explain, "predict": bench_predict, "app": bench_app,
            "scale": bench_scale}  # last: it reads the sections before it


def _markdown(results: dict) -> str:
    lines = [f"# Benchmarks ({results['date']})", "", f"Device: {results['device']}", ""]
    for section, figures in results["sections"].items():
        lines += [f"## {section}", "", "```json", json.dumps(figures, indent=2), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__)
    parser.add_argument("--out", default="outputs/bench")
    parser.add_argument("--only", default=None,
                        help="comma list of sections (ingest, reader, layouts, training, explain, predict, "
                             "app, scale)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = _sections()
    chosen = args.only.split(",") if args.only else list(sections)
    unknown = [s for s in chosen if s not in sections]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; expected some of {list(sections)}")
    provenance = stamp(f"python -m tests.bench.run --only {','.join(chosen)}" if args.only else "make bench")
    results = {"date": provenance["date"], "device": provenance["device"], "sections": {}}
    results_file = out / "results.json"
    if results_file.exists():  # keep the other sections' figures when re-running one part
        results["sections"] = json.loads(results_file.read_text()).get("sections", {})
    for name in chosen:
        print(f"bench: {name} ...", flush=True)
        work = out / f"work-{name}"
        shutil.rmtree(work, ignore_errors=True)  # what a killed run left: commands refuse to overwrite it
        start = time.perf_counter()
        results["sections"][name] = sections[name](work)
        results["sections"][name]["bench_wall_s"] = time.perf_counter() - start
        results["sections"][name]["provenance"] = provenance  # per section: a later --only run keeps this one
        results_file.write_text(json.dumps(results, indent=2))
        (out / "results.md").write_text(_markdown(results))
    shutil.rmtree(out / REAL_SCALE_FOLDER, ignore_errors=True)  # 2.5 GB of pixels
    print(f"bench: results in {results_file} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
