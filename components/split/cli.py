"""Split ingested patches into train / val / test (pooled training samples) and heldout (all others).

Reads one or more ingest manifests (manifest.parquet or a folder holding one, local or gs://) and
writes OUT/split.parquet (every input row plus a `split` column), OUT/split.json (options and
counts) and OUT/split.md (a table of counts per sample and split).

--strategy random: the thesis's split; the training samples' patches are pooled, shuffled with
  --seed and cut by --fractions (val and test get floor(n * fraction), train the rest).
--strategy blocked: each training sample's MR grid is tiled into --block-size square blocks that go
  whole to one set; voxels within --guard voxels (Chebyshev) of another set become `gap`, so that
  neighbouring, near-identical patches never straddle train and val/test and inflate R².

Example:
  histoxai split gs://bucket/ingest/3 gs://bucket/ingest/4 gs://bucket/ingest/5 \\
      --train-samples 3,4 --strategy blocked --out gs://bucket/split
"""

from __future__ import annotations

import argparse

from histoxai.components.split.params import DEFAULTS, STRATEGIES
from histoxai.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifests", nargs="*", metavar="MANIFEST",
                        help="ingest manifest (manifest.parquet or its folder), local or gs://")
    parser.add_argument("--out", required=True, help="output folder, local or gs://")
    parser.add_argument("--train-samples", default=",".join(DEFAULTS.train_samples),
                        help="comma-separated ids of the samples pooled for train/val/test "
                             "(default: %(default)s)")
    parser.add_argument("--strategy", choices=STRATEGIES, default=DEFAULTS.strategy,
                        help="random voxel split (the thesis's) or spatially blocked (default: %(default)s)")
    parser.add_argument("--fractions", default=",".join(str(f) for f in DEFAULTS.fractions),
                        help="train,val,test fractions, each >= 0, summing to 1 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed,
                        help="shuffling seed (default: %(default)s)")
    parser.add_argument("--block-size", type=int, default=DEFAULTS.block_size,
                        help="blocked: block side in MR voxels (default: %(default)s)")
    parser.add_argument("--guard", type=int, default=DEFAULTS.guard,
                        help="blocked: guard band width in voxels, Chebyshev distance (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _comma_list(text: str, option: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise InputError(f"{option} {text!r}: expected a comma-separated list without empty entries")
    return items


def _fractions(text: str) -> list[float]:
    try:
        return [float(item) for item in _comma_list(text, "--fractions")]
    except ValueError as err:
        raise InputError(f"--fractions {text}: expected three numbers train,val,test, "
                         "e.g. 0.6,0.2,0.2") from err


def run(args: argparse.Namespace) -> None:
    from histoxai.components.split.split import split_manifests

    counts = split_manifests(
        args.manifests, args.out,
        train_samples=_comma_list(args.train_samples, "--train-samples"),
        strategy=args.strategy, fractions=_fractions(args.fractions), seed=args.seed,
        block_size=args.block_size, guard=args.guard, overwrite=args.overwrite,
    )
    print(counts.to_string())
    print(f"wrote {args.out}")
