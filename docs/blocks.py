"""The docs' figure blocks: per marker key, the figures file and sections it reads and its Markdown."""

from __future__ import annotations

import math

SOURCES = {"bench": "bench.json", "demo": "demo.json", "baseline": "baseline.json"}
PROVENANCE_KEYS = ("command", "date", "device", "commit", "dirty")


def num(value, digits: int = 2) -> str:
    """A figure as shown: fixed decimals, thousands separated; n/a for a missing or non-finite value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def rate(value) -> str:
    """A speed: one decimal from 10 up, two below."""
    return num(value, 1 if value is not None and value >= 10 else 2)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# --- make bench ------------------------------------------------------------------------------------------

def bench_ingest(f: dict) -> str:
    phantom = f["phantom_render"]

    def run(label: str, r: dict) -> list[str]:
        return [f"ingest of that slide, {label}: {num(r['patches'], 0)} patches of 360 px, {r['encoding']}",
                f"{num(r['patches_per_s'], 0)} patches/s ({num(r['patches_per_s_in_step'], 0)} in the step "
                f"alone), {num(r['bytes_per_patch'] / 1000, 0)} kB per patch, peak RSS "
                f"{num(r['peak_rss_mib'], 0)} MiB"]

    return table(["case", "figure"], [
        [f"phantom: {f['case_phantom']}", f"{num(phantom['wall_s'], 0)} s, peak RSS "
                                          f"{num(phantom['peak_rss_mib'], 0)} MiB"],
        run("the step's defaults, 2 cores", f["ingest"]),
        run("1 core (`taskset -c 0`)", f["ingest_1_core"]),
        run("`--encoding png`, 2 cores", f["ingest_png"]),
        ["ingest speed-up: 2 cores over 1 / default over png", f"{num(f['speedup_2_cores_over_1'], 2)}x / "
                                                                f"{num(f['speedup_over_png'], 2)}x"],
    ])


def bench_reader(f: dict) -> str:
    reader = f["reader_360px"]
    encodings = list(reader)
    zlib = reader["zlib"]
    return table(["case", "figure"], [
        [f"shard reader (`histoxai.dataset`), uint8 batches as training and prediction read them: "
         f"{' / '.join(encodings)}",
         " / ".join(num(reader[e]["patches_per_s"], 0) for e in encodings) + " patches/s; "
         + " / ".join(num(reader[e]["bytes_per_patch"] / 1000, 0) for e in encodings) + " kB per patch"],
        ["zlib: uint8 batches / float32 batches (the cast on the host, as saliency reads) / the reader "
         "before (TFRecordDataset in record order, float32 batches)",
         f"{num(zlib['patches_per_s'], 0)} / {num(zlib['patches_per_s_float32'], 0)} / "
         f"{num(zlib['patches_per_s_reader_before'], 0)} patches/s "
         f"({num(zlib['patches_per_s'] / zlib['patches_per_s_reader_before'], 2)}x the reader before)"],
        *([["zlib, CPU time per patch (all threads): uint8 batches / float32 batches / the reader before",
            " / ".join(num(zlib["cpu_ms_per_patch"][k], 2) for k in ("uint8", "float32", "reader_before"))
            + " ms"]] if "cpu_ms_per_patch" in zlib else []),
        *[[f"codec on one core, per 360 px patch: {name}",
           f"encode {num(c['encode_ms'], 2)} ms, decode {num(c['decode_ms'], 2)} ms, "
           f"{num(c['bytes_per_patch'] / 1000, 0)} kB"] for name, c in f.get("codecs_360px", {}).items()],
    ])


def bench_layouts(f: dict) -> str:
    rows = [[f"`{name}`", f"{num(r['he_mat_mib'], 0)} MiB", f"{num(r['wall_s'], 1)} s",
             f"{num(r['read_wall_s'], 1)} s", f"{num(r['peak_rss_mib'], 0)} MiB"]
            for name, r in f["layouts"].items()]
    times = [r["wall_s"] for r in f["layouts"].values()]
    rows.append(["slowest / fastest", "", f"{num(max(times) / min(times), 2)}x", "", ""])
    return table(["HE.mat layout (`histoxai/matlayout.py`)", "HE.mat size", "ingest time", "of which reading",
                  "peak RSS"], rows)


def bench_scale(f: dict) -> str:
    def span(low, high, show) -> str:  # one figure, or "low to high"; n/a where none was derived
        if low is None:
            return "n/a"
        return show(low) if abs(high - low) < 1e-9 else f"{show(low)} to {show(high)}"

    def hours(low, high) -> str:
        if low is not None and high < 1:  # under an hour: minutes
            digits = 0 if low * 60 >= 1 else 1
            return span(low * 60, high * 60, lambda m: num(m, digits)) + " min"
        return span(low, high, lambda h: num(h, 1)) + ("" if low is None else " h")

    rows = []
    for r in f["rows"]:
        rows.append([r["step"], f"{num(r['work'], 0)} {r['unit']}", r["machine"], rate(r["rate_here"]),
                     hours(r.get("hours_here"), r.get("hours_here")),
                     span(r.get("rate_compiled_low"), r.get("rate_compiled_high"), rate),
                     hours(r.get("hours_compiled_low"), r.get("hours_compiled_high"))])
    return table(["step", "work", "compiled machine", "per s here (2 CPU cores)", "time here",
                  "per s on the compiled machine", "time there"], rows)


def bench_training(f: dict) -> str:
    rows = []
    for case in f["cases"]:
        name = "tiny CNN" if case["backbone"] == "tiny" else case["backbone"]
        speed = (f"{num(case['train_images_per_s'], 1)} img/s" if case["status"] == "ok" else case["status"])
        if case["status"] == "ok" and case.get("warmup_s") is not None:
            speed += f" (warm-up {num(case['warmup_s'], 0)} s)"
        xla = "with" if case["jit_compile"] else "without"
        built = ", training state built before fit" if case.get("built") else ""
        rows.append([f"training, {case['image_size']} px, batch {f['batch_size']}: {name}, "
                     f"{case['precision']}, {xla} XLA{built}", speed])
    rows.append(["training input pipeline alone (decode / from cache)",
                 f"{num(f['input_decode_images_per_s'], 0)} / "
                 f"{num(f['input_cached_images_per_s'], 0)} img/s"])
    return table(["case", "figure"], rows)


def bench_explain(f: dict) -> str:
    rows = []
    for backbone, measured in f["backbones"].items():
        name = "tiny CNN" if backbone == "tiny" else backbone
        for method, m in measured["methods"].items():
            versus = (f" vs {rate(m['tf_keras_vis_maps_per_s'])} ({num(m['speedup'], 1)}x)"
                      if m.get("speedup") is not None else " (no tf-keras-vis counterpart)")
            rows.append([f"explain, {f['image_size']} px, {name}, {method}",
                         f"{rate(m['maps_per_s'])}{versus}"])
        low, high = measured["speedup_range"]
        difference, smooth = measured.get("max_abs_difference"), measured.get("smoothgrad_difference")
        rows.append([f"explain, {f['image_size']} px, {name}: speed-up over tf-keras-vis, all methods",
                     f"{num(low, 1)}x to {num(high, 1)}x" + ("" if difference is None else
                                                           f"; largest map difference {difference:.0e}"
                                                           " (methods without noise)")
                     + ("" if not smooth else
                        f"; SmoothGrad {smooth['max_abs_difference']:.1e} against tf-keras-vis's own "
                        f"{smooth['tf_keras_vis_seed_to_seed_difference']:.1e} from seed to seed")])
    return table(["case (maps/s: step vs tf-keras-vis one batch at a time)", "figure"], rows)


def bench_predict(f: dict) -> str:
    rows = [[f"{c['backbone']}, {c['pixels_per_voxel']} px per voxel, from the {c['input']}",
             f"{num(c['patches_per_s'], 0)} patches/s"
             + ("" if c.get("command_wall_s") is None else
                f"; command {num(c['command_wall_s'], 1)} s, peak RSS {num(c['peak_rss_mib'], 0)} MiB")]
            for c in f["cases"]]
    return table([f"`histoxai predict`, batch {f['batch_size']}", "figure"], rows)


def bench_app(f: dict) -> str:
    cold = f["browser_cold_s"]
    return table(["case", "figure"], [[
        f"review app: first grid of {f['tiles']} tiles, {num(f['patches'], 0)}-patch run, headless Chromium",
        f"{num(f['browser_cold_median_s'])} s cold (median of {len(cold)}, "
        f"{num(min(cold))}-{num(max(cold))} s), "
        f"{num(f['browser_warm_median_s'])} s warm"]])


def app_sign_in(after: dict, before: dict) -> str:
    def row(label: str, f: dict) -> list[str]:
        checked = f"{num(f['guesses_per_s'], 3 if f['guesses_per_s'] < 1 else 1)}"
        if f["locked_out"]:
            after = f["guesses_checked_after_lockout"]
            return [label, f"{checked} ({num(f['failures_until_lockout'], 0)} in the "
                           f"{num(f['seconds_until_lockout'], 0)} s until the lockout)",
                    f"{num(f['failures_until_lockout'], 0)}; {'none' if after == 0 else num(after, 0)} "
                    f"checked in the {num(f['after_lockout_s'], 0)} s after it "
                    f"({num(f['guesses_refused'], 0)} tries refused in all)"]
        return [label, f"{checked} ({num(f['guesses_checked'], 0)} failures in {num(f['attack_s'], 0)} s)",
                "none: no lockout"]

    return table(["", "checked guesses/s", "failures until lockout"],
                 [row(f"before ({before['defence']})", before), row("after", after)])


# --- make demo -------------------------------------------------------------------------------------------

def demo_summary(f: dict) -> str:
    test, load = f["r2_test"], f["load_average_15min"]
    return table(["`make demo`", "figure"], [
        ["time, phantom + pipeline (of which the pipeline)",
         f"{num(f['demo_s'], 0)} s ({num(f['pipeline_s'], 0)} s)"
         + ("; the machine's load average was not recorded" if load is None else
            f"; load average over the last 15 minutes, at the end: {num(load)}")],
        ["patches per sample", ", ".join(f"sample {s}: {num(n, 0)}" for s, n in f["patches"].items())],
        ["test R² (evaluate step): " + ", ".join(test), ", ".join(num(v, 2) for v in test.values())],
    ])


def demo_r2(f: dict) -> str:
    columns = f["r2_columns"]
    return table(["data", *columns], [[row["data"], *(row[c] for c in columns)] for row in f["r2_rows"]])


def demo_heldout(f: dict) -> str:
    rows = [[f"sample {r['sample']}, {r['target']} ({r['model']})", num(r["r2"]), num(r["r2_var"]),
             num(r["bias"], 3)] for r in f["heldout"]]
    return table(["held out", "R²", "R²var", "bias (ŷ - y)"], rows)


def demo_tune(f: dict) -> str:
    t = f["tuning"]
    return table(["demo study", "trials", "complete / pruned", "best validation R²", "trials' time"], [[
        f"{t['model']}: {', '.join(t['targets'])}", str(t["trials"]), f"{t['complete']} / {t['pruned']}",
        num(t["best_value"], 4), f"{num(t['seconds'], 0)} s"]])


def _trust_rows(rows: list[dict]) -> str:
    """Each measure as 'value; random / darkness / edges / randomised model'; unmeasured ones left out."""
    labels = {"mask mass": "mask mass", "rank accuracy": "rank accuracy",
              "deletion AUC": "deletion AUC (lower wins)", "insertion AUC": "insertion AUC (higher wins)"}
    measures = [m for m in labels if any(m in r["measures"] for r in rows)]
    out = []
    for r in rows:
        cells = []
        for measure in measures:
            values = r["measures"].get(measure)
            cells.append("n/a" if values is None else
                         f"{num(values[0])}; " + " / ".join(num(v) for v in values[1:]))
        rho = r.get("randomisation_rho")
        out.append([r["target"], r["method"], *cells,
                    r["randomisation"] + ("" if rho is None else f" ({num(rho)})"), r["verdict"]])
    return table(["target", "method", *(labels[m] for m in measures), "randomisation (ρ of magnitudes)",
                  "verdict"], out)


def demo_trust(f: dict, targets: tuple[str, ...]) -> str:
    return _trust_rows([r for r in f["trust"] if r["target"] in targets])


def demo_derived(f: dict) -> str:
    test = f["r2_test"]
    line = (f"Test R² of this run: {', '.join(f'{t} {num(v)}' for t, v in test.items())}; "
            f"demo time {num(f['demo_s'], 0)} s.")
    return _trust_rows([r for r in f["trust"] if r["target"] != "CC"]) + "\n\n" + line


def demo_registry(f: dict) -> str:
    return "```\n" + f["registry"] + "\n```"


# --- histoxai baseline -----------------------------------------------------------------------------------

def baseline(f: dict) -> str:
    a, q, c = f["across"], f["quadratic_median"], f["cnn"]
    return table(["", "ours (seed 0)", "published"], [
        ["across tumours, CD vs MD, r²", num(a["CD-MD"], 3), "0.58 (thesis, citing Brabec et al. 2023)"],
        ["across tumours, SA vs FAIP, r²", num(a["SA-FAIP"], 3), "0.82 (thesis: \"IA and FA\")"],
        ["per-sample quadratic, median test R²: MD~CD / FAIP~SA",
         f"{num(q['MD'], 3)} / {num(q['FAIP'], 3)}", ""],
        [f"per-sample CNN, test R² MD: sample {c['MD_best_sample']} / median",
         f"{num(c['MD_best'], 3)} / {num(c['MD_median'], 3)}",
         "\"60 % on sample 13, others below 40 %\" (thesis, read from the paper's figure)"],
        ["per-sample CNN, test R² FAIP: max / median",
         f"{num(c['FAIP_max'], 3)} / {num(c['FAIP_median'], 3)}",
         "\"all below 40 %\" (thesis)"],
    ])


# key -> (source, sections, function of the sections' figures)
BLOCKS = {
    "bench-ingest": ("bench", ("ingest",), bench_ingest),
    "bench-reader": ("bench", ("reader",), bench_reader),
    "bench-layouts": ("bench", ("layouts",), bench_layouts),
    "bench-scale": ("bench", ("scale",), bench_scale),
    "bench-training": ("bench", ("training",), bench_training),
    "bench-explain": ("bench", ("explain",), bench_explain),
    "bench-predict": ("bench", ("predict",), bench_predict),
    "bench-app": ("bench", ("app",), bench_app),
    "app-sign-in": ("bench", ("app", "app-before"), lambda after, before: app_sign_in(after["sign_in_attack"],
                                                                                      before)),
    "demo-summary": ("demo", ("demo",), demo_summary),
    "demo-r2": ("demo", ("demo",), demo_r2),
    "demo-heldout": ("demo", ("demo",), demo_heldout),
    "demo-tune": ("demo", ("demo",), demo_tune),
    "demo-trust-cc": ("demo", ("demo",), lambda f: demo_trust(f, ("CC",))),
    "demo-trust-mdfa": ("demo", ("demo",), lambda f: demo_trust(f, ("MD", "FA"))),
    "demo-derived-trust": ("demo", ("demo-derived",), demo_derived),
    "demo-registry": ("demo", ("demo",), demo_registry),
    "baseline": ("baseline", ("baseline",), baseline),
}
