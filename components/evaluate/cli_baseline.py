"""The original study's baselines (Brabec et al. 2023) from its summary.mat: per-sample and across tumours.

Per sample: the quadratic regressions MD ~ CD, FAIP ~ SA (and FA ~ SA) with CD and SA smoothed
(5x5 Gaussian, sigma 0.5 voxel, inside the ROI), fitted on a random 80 % of the ROI voxels and
scored on the other 20 %, --baseline-repeats times from --seed (median reported); and the study's
per-sample CNN scored on its own test set (sMD_CNN, sFAIP_CNN). Across tumours: the squared
correlation of per-tumour mean CD vs MD and SA vs FAIP (and SA vs FA).

Prints a per-sample table (R² = 1 - SSE/SST first, then the thesis's R²var = 1 - var(y - ŷ)/var(y))
and the across-tumour table, in Markdown. With --out (local or gs://) also writes
OUT/baseline.parquet (one row per sample x baseline x target, every metric), OUT/baseline.md and
OUT/baseline.json. Undefined values (e.g. R² of a constant target) show as n/a with a note.

Example:
  histoxai baseline --out gs://bucket/baseline --baseline-repeats 100 --seed 0
"""

from __future__ import annotations

import argparse

from histoxai.components.evaluate.params import DEFAULTS, ROI_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", dest="baseline_summary", default=DEFAULTS.baseline_summary,
                        metavar="PATH",
                        help="the study's summary.mat, local or gs:// (default: 'bundled', the copy "
                             "shipped with histoxai)")
    parser.add_argument("--out", default=None, help="output folder, local or gs:// (default: print only)")
    parser.add_argument("--baseline-repeats", type=int, default=DEFAULTS.baseline_repeats,
                        help="random 80/20 splits per sample and regression (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed,
                        help="seed of the random splits (default: %(default)s)")
    parser.add_argument("--roi", choices=ROI_CHOICES, default=DEFAULTS.baseline_roi,
                        help="ROI variant of summary.mat; sROI is the one the study scored on "
                             "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> None:
    from histoxai.components.evaluate.baseline import (
        compute_baselines,
        summary_path,
        to_markdown,
        write_baselines,
    )
    from histoxai.errors import InputError

    summary = summary_path(args.baseline_summary)
    if summary is None:
        raise InputError("--summary '': expected 'bundled', a summary.mat path or a gs:// URI")
    result = compute_baselines(summary, roi=args.roi, repeats=args.baseline_repeats, seed=args.seed)
    print(to_markdown(result, full=False))
    if args.out:
        write_baselines(result, args.out, overwrite=args.overwrite)
        print(f"wrote {args.out}")
