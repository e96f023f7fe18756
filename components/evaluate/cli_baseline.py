"""The original study's baselines (Brabec et al. 2023) from its summary.mat: per-sample and across tumours.

Per sample: the quadratic regressions MD ~ CD, FAIP ~ SA (and FA ~ SA) with CD and SA smoothed
(5x5 Gaussian, sigma 0.5 voxel, inside the ROI), fitted on a random 80 % of the ROI voxels and
scored on the other 20 %, --repeats times from --seed (median reported); and the study's
per-sample CNN scored on its own test set (sMD_CNN, sFAIP_CNN). Across tumours: the squared
correlation of per-tumour mean CD vs MD and SA vs FAIP (and SA vs FA).

Prints a per-sample table (R² = 1 - SSE/SST first, then the thesis's R²var = 1 - var(y - ŷ)/var(y))
and the across-tumour table, in Markdown. With --out (local or gs://) also writes
OUT/baseline.parquet (one row per sample x baseline x target, every metric), OUT/baseline.md and
OUT/baseline.json. Undefined values (e.g. R² of a constant target) show as n/a with a note.

Example:
  histoxai baseline --out gs://bucket/baseline --repeats 100 --seed 0
"""

from __future__ import annotations

import argparse

ROI_CHOICES = ("sROI", "ROI", "sROI_full", "sROI_alternative")  # as baseline.ROI_CHOICES, without numpy


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", default=None, metavar="PATH",
                        help="the study's summary.mat, local or gs:// "
                             "(default: the copy bundled with histoxai)")
    parser.add_argument("--out", default=None, help="output folder, local or gs:// (default: print only)")
    parser.add_argument("--repeats", type=int, default=100,
                        help="random 80/20 splits per sample and regression (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random splits (default: 0)")
    parser.add_argument("--roi", choices=ROI_CHOICES, default="sROI",
                        help="ROI variant of summary.mat; sROI is the one the study scored on "
                             "(default: sROI)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> None:
    from histoxai.components.evaluate.baseline import (
        BUNDLED_SUMMARY,
        compute_baselines,
        to_markdown,
        write_baselines,
    )

    result = compute_baselines(args.summary or BUNDLED_SUMMARY, roi=args.roi, repeats=args.repeats,
                               seed=args.seed)
    print(to_markdown(result, full=False))
    if args.out:
        write_baselines(result, args.out, overwrite=args.overwrite)
        print(f"wrote {args.out}")
