"""The figures the docs show, picked from the outputs of make bench, make demo and histoxai baseline."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def _round(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


# --- make bench: results.json's sections -----------------------------------------------------------------

def bench_section(name: str, s: dict) -> dict | None:
    """The figures of one results.json section that benchmarks.md shows (None: a section it does not show)."""
    if name == "reader":
        def figure(key, value):
            if isinstance(value, dict):  # CPU ms per patch, by reader
                return {k: _round(v, 3) for k, v in value.items()}
            return _round(value, 1) if key.startswith("patches_per_s") else round(value)

        reader = {e: {k: figure(k, v) for k, v in r.items()} for e, r in s["reader_360px"].items()}
        return {"case": s["case"], "reader_360px": reader,
                "codecs_360px": {name: {k: _round(v, 2) if k.endswith("_ms") else round(v)
                                        for k, v in c.items()}
                                 for name, c in s.get("codecs_360px", {}).items()}}
    if name == "ingest":
        runs = {k: {"patches": s[k]["patches"], "encoding": s[k]["encoding"],
                    "patches_per_s": _round(s[k]["patches_per_s"], 1),
                    "patches_per_s_in_step": _round(s[k]["patches_per_s_in_step"], 1),
                    "bytes_per_patch": round(s[k]["bytes_per_patch"]),
                    "peak_rss_mib": _round(s[k]["peak_rss_mib"], 1)}
                for k in ("ingest", "ingest_1_core", "ingest_png")}
        return {"case_phantom": s["case"].split(", patches")[0].replace(" per voxel", ""),
                "phantom_render": {k: _round(s["phantom_render"][k], 1) for k in ("wall_s", "peak_rss_mib")},
                **runs, "speedup_2_cores_over_1": _round(s["speedup_2_cores_over_1"], 2),
                "speedup_over_png": _round(s["speedup_over_png"], 2)}
    if name == "layouts":
        return {"case": s["case"], "layouts": {
            k: {"wall_s": _round(r["wall_s"], 1), "peak_rss_mib": _round(r["peak_rss_mib"], 1),
                "read_wall_s": _round(r["read_wall_s"], 1), "he_mat_mib": _round(r["he_mat_mib"], 0)}
            for k, r in s["ingest_per_layout"].items()}}
    if name == "scale":
        return {"flops_per_patch_360": s["flops_per_patch"]["360"],
                "pooled_train_val_test": s["pooled_train_val_test"],
                "patches_total": sum(s["patches_per_sample"].values()), "assumptions": s["assumptions"],
                "published": s["published"], "rows": [{k: _round(v, 4) if isinstance(v, float) else v
                                                       for k, v in r.items()} for r in s["rows"]]}
    if name == "training":
        cases = [{"backbone": c["backbone"], "image_size": c["image_size"], "precision": c["precision"],
                  "jit_compile": c.get("jit_compile", c.get("jit")), "status": c["status"],
                  "train_images_per_s": c.get("train_images_per_s"), "built": c.get("built", False),
                  "warmup_s": c.get("warmup_s")} for c in s["training"]]
        batch = next((c["batch_size"] for c in s["training"] if "batch_size" in c), 16)
        return {"batch_size": batch, "cases": cases,
                "input_decode_images_per_s": s["input_decode_images_per_s"],
                "input_cached_images_per_s": s["input_cached_images_per_s"]}
    if name == "explain":
        backbones = {}
        for backbone in ("EfficientNetV2S", "tiny"):
            rows = s[backbone]
            keys = ("maps_per_s", "tf_keras_vis_maps_per_s", "speedup")
            methods = {k: {key: r.get(key) for key in keys} for k, r in rows.items()}
            speedups = [r["speedup"] for r in rows.values() if r.get("speedup") is not None]
            # deterministic methods against tf-keras-vis; SmoothGrad against its own seed-to-seed noise
            differences = [r["max_abs_difference"] for k, r in rows.items()
                           if "max_abs_difference" in r and not k.startswith("smoothgrad")]
            largest = float(f"{max(differences):.1e}") if differences else None
            smooth = next((r for k, r in rows.items() if k.startswith("smoothgrad")), {})
            compared = ("max_abs_difference", "tf_keras_vis_seed_to_seed_difference")
            noise = {k: float(f"{smooth[k]:.1e}") for k in compared if k in smooth}
            backbones[backbone] = {"methods": methods, "speedup_range": [min(speedups), max(speedups)],
                                   "max_abs_difference": largest, "smoothgrad_difference": noise or None}
        return {"image_size": s["image_size"], "backbones": backbones}
    if name == "predict":
        keys = ("pixels_per_voxel", "backbone", "input", "patches_per_s", "command_wall_s", "peak_rss_mib")
        return {"batch_size": s["batch_size"], "cases": [{k: c[k] for k in keys} for c in s["cases"]]}
    if name == "app":
        from tests.bench.app_bench import ATTACK_AFTER_LOCK_S  # the attack's setting, not in results.json

        browser = s["browser"]
        attack = {k: s["sign_in_attack"][k] for k in (
            "guesses_per_s", "guesses_checked", "attack_s", "locked_out", "seconds_until_lockout",
            "failures_until_lockout", "guesses_checked_after_lockout", "guesses_refused")}
        attack = {k: _round(v, 3) if isinstance(v, float) else v for k, v in attack.items()}
        return {"tiles": s["tiles"], "patches": s["patches"],
                "browser_cold_s": [_round(v, 2) for v in browser["cold_s"]],
                "browser_cold_median_s": _round(browser["cold_median_s"], 2),
                "browser_warm_median_s": _round(browser["warm_median_s"], 2),
                "sign_in_attack": {**attack, "after_lockout_s": ATTACK_AFTER_LOCK_S}}
    return None


# --- histoxai baseline -----------------------------------------------------------------------------------

def baseline_figures(b: dict) -> dict:
    def r2(kind: str, target: str) -> dict[str, float]:
        return {r["sample"]: r["r2"] for r in b["per_sample"]
                if r["baseline"] == kind and r["target"] == target}

    cnn_md, cnn_faip = r2("cnn_brabec2023", "MD"), r2("cnn_brabec2023", "FAIP")
    best = max(cnn_md, key=cnn_md.get)
    return {"across": {f"{r['feature']}-{r['target']}": _round(r["pearson_r2"]) for r in b["across_tumour"]},
            "quadratic_median": {"MD": _round(statistics.median(r2("quadratic", "MD").values())),
                                 "FAIP": _round(statistics.median(r2("quadratic", "FAIP").values()))},
            "cnn": {"MD_best_sample": best, "MD_best": _round(cnn_md[best]),
                    "MD_median": _round(statistics.median(cnn_md.values())),
                    "FAIP_max": _round(max(cnn_faip.values())),
                    "FAIP_median": _round(statistics.median(cnn_faip.values()))}}


# --- make demo -------------------------------------------------------------------------------------------

def _one(run: Path, pattern: str, check=lambda p: True) -> Path:
    found = sorted(p for p in run.rglob(pattern) if check(p))
    if not found:
        raise FileNotFoundError(f"{run}: no {pattern} (expected a finished demo run there)")
    return found[0]


def _cell(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _trust(run: Path) -> list[dict]:
    import pandas as pd

    from histoxai.saliency.controls import CONTROLS
    from histoxai.saliency.trust_report import MEASURE_NAMES

    rows = []
    for path in sorted(run.rglob("trust.parquet")):
        for _, r in pd.read_parquet(path).iterrows():
            measures = {}
            for measure, label in MEASURE_NAMES.items():
                values = [r.get(measure), *(r.get(f"{c}_{measure}") for c in CONTROLS)]
                if not all(pd.isna(v) for v in values):
                    measures[label] = [None if pd.isna(v) else _round(v) for v in values]
            rho = r.get("randomization_abs_rho")
            method = f"{r['method']}:{r['setting']}" if r["setting"] else r["method"]
            rows.append({"target": r["target"], "method": method,
                         "measures": measures, "randomisation": str(r["randomization"]),
                         "randomisation_rho": None if rho is None or pd.isna(rho) else _round(rho),
                         "verdict": str(r["verdict"])})
    return sorted(rows, key=lambda r: r["target"])  # stable: each explain step's method order stays


def demo_figures(demo: Path, record: dict) -> dict:
    import pandas as pd

    run = demo / record["run_dir"]
    summary = json.loads((run / "report" / "summary").read_text())  # the report step's summary.json artifact
    table = pd.DataFrame(summary["r2_table"])
    label = table.columns[0]
    # the run's own models (a demo into a folder with champions also scores them: `<model>_champion`)
    columns = [c for c in table.columns if c != label and not c.endswith("_champion)")]
    rows = [{"data": str(r[label]), **{c: r[c] if isinstance(r[c], str) else _cell(r[c]) for c in columns}}
            for _, r in table.iterrows()]
    evaluation = pd.read_parquet(_one(run, "evaluation.parquet"))
    evaluation = evaluation[~evaluation["model"].str.endswith("_champion")]
    pooled_test = evaluation[(evaluation["kind"] != "sample") & (evaluation["group"] == "test")]
    test = {f"{r['target']} ({r['model']})": _round(r["r2"]) for _, r in pooled_test.iterrows()}
    held = evaluation[(evaluation["kind"] == "sample") & ~evaluation["training"].astype(bool)]
    heldout = [{"sample": str(r["group"]), "model": r["model"], "target": r["target"], "r2": _round(r["r2"]),
                "r2_var": _round(r["r2_var"]), "bias": _round(r["bias"])} for _, r in held.iterrows()]
    trials = pd.read_parquet(_one(run, "trials.parquet"))
    states = trials["state"].value_counts()
    tuning = {"model": "multitask", "targets": [c[4:-3] for c in trials.columns if c.startswith("val_")],
              "trials": len(trials), "complete": int(states.get("COMPLETE", 0)),
              "pruned": int(states.get("PRUNED", 0)), "best_value": _round(trials["objective"].max()),
              "seconds": _round(trials["duration_s"].sum(), 1)}
    from histoxai.pipelines.demo import registry_state

    registry = registry_state(str(demo / "registry")).replace(str(demo.resolve()), "OUT/demo").replace(
        str(demo), "OUT/demo")
    return {"demo_s": record["demo_s"], "pipeline_s": record["pipeline_s"],
            "load_average_15min": record.get("load_average_15min"),  # None: a demo.json from before it
            "patches": {str(s["sample"]): s["patches"] for s in summary["samples"]},
            "r2_columns": columns, "r2_rows": rows, "r2_test": test, "heldout": heldout, "tuning": tuning,
            "trust": _trust(run), "registry": registry}
