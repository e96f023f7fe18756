"""Assign every patch to train / val / test / heldout / gap: random voxel split or spatially blocked split.

Two strategies, both over the pooled training samples (default 3 and 4, as in the thesis); every
patch of any other sample is "heldout" (cross-sample evaluation).

random (the thesis's split): the training patches are sorted by key, shuffled with the seed and cut
60/20/20. Counts are exact: n_val = floor(n * f_val), n_test = floor(n * f_test), and the remainder
(n - n_val - n_test) goes to train, so train never loses a patch to rounding.

blocked: a random voxel split leaks. The MR maps are smooth and neighbouring voxels' H&E patches are
cut from adjacent tissue that looks alike, so a test voxel's neighbour is almost always in train and
the model is scored on near-copies of what it saw: R² is inflated and says little about new tissue.
Here each training sample's MR grid is tiled into B x B voxel blocks (aligned to voxel 0, 0); blocks
are shuffled (seeded) and assigned whole, walking the shuffled blocks and giving each to the set in
whose share of the cumulative patch count its midpoint falls, so each set's count is within about
one block of its target. Assignment is per sample, not pooled: every training sample then contributes
the same fractions to val and test (a pooled walk over a few dozen blocks could leave most of one
sample's tissue in test), and samples share no grid anyway. The cost is coarser granularity per
sample, at most about one block per set boundary.
Then a guard band: any voxel within Chebyshev distance G (default 1, the 8-neighbourhood) of a voxel
of a different set in the same sample becomes "gap" and is excluded, so no remaining train voxel
touches a val or test voxel (and val never touches test). The band is symmetric (both sides of a
boundary give up G voxels) so that no set is favoured; its size is reported. The fractions are met
before the band; since val and test blocks mostly border train, they lose a larger share of their
voxels, so the kept shares shift towards train (on the real ROIs of samples 3 and 4, 8 x 8 blocks and
G = 1: 26 % gap, kept shares 0.66 / 0.165 / 0.176). Larger blocks lose less.

Sample ids are strings; `assign_splits` is the pure labelling function, `split_manifests` reads
manifests, writes split.parquet + split.json + split.md and returns the counts.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from histoxai import artifacts, outputs
from histoxai.components.split.params import DEFAULTS
from histoxai.errors import InputError
from histoxai.manifest import KEY, SPLITS, check_columns, natural_key, read_manifest

STRATEGIES = ("random", "blocked")
EVALUATION_SETS = ("train", "val", "test")
# Float tolerance for fractions that sum to 1 and for floor(n * f) when n * f is an integer in exact maths.
_EPS = 1e-9


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate train/val/test fractions: three numbers >= 0 that sum to 1."""
    text = ",".join(str(f) for f in fractions)
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError) as err:
        raise InputError(f"--fractions {text}: expected three numbers train,val,test") from err
    if len(values) != 3:
        raise InputError(f"--fractions {text}: expected three numbers train,val,test, got {len(values)}")
    if any(not math.isfinite(f) or f < 0 for f in values):
        raise InputError(f"--fractions {text}: each fraction must be a number >= 0")
    if abs(sum(values) - 1.0) > 1e-6:
        raise InputError(f"--fractions {text}: the fractions must sum to 1 (they sum to {sum(values):g})")
    return values  # type: ignore[return-value]


def _check_options(strategy: str, block_size: int, guard: int) -> None:
    if strategy not in STRATEGIES:
        raise InputError(f"--strategy {strategy}: expected one of {', '.join(STRATEGIES)}")
    if strategy == "blocked":
        if int(block_size) != block_size or block_size < 1:
            raise InputError(f"--block-size {block_size}: expected a whole number of voxels >= 1")
        if int(guard) != guard or guard < 0:
            raise InputError(f"--guard {guard}: expected a whole number of voxels >= 0")


def _check_frame(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """The key columns, with integer voxel coordinates and sample ids as strings."""
    missing = [c for c in KEY if c not in frame.columns]
    if missing:
        raise InputError(f"{where}: lacks columns {missing}; expected a patch manifest")
    for column in ("row", "col"):
        if not pd.api.types.is_integer_dtype(frame[column]):
            raise InputError(f"{where}: column '{column}' must hold integer voxel indices, "
                             f"found {frame[column].dtype}")
    keys = frame.loc[:, list(KEY)].copy()
    keys["sample"] = keys["sample"].astype(str)
    return keys


def check_unique_keys(keys: pd.DataFrame, where: str = "input manifests") -> None:
    """Each (sample, row, col) voxel may appear once; a repeat means a sample was ingested twice."""
    repeated = keys.duplicated(list(KEY), keep=False)
    if repeated.any():
        first = keys[repeated].iloc[0]
        samples = sorted(keys.loc[repeated, "sample"].unique(), key=natural_key)
        raise InputError(
            f"{where}: sample {', '.join(repr(s) for s in samples)} has voxels listed more than once "
            f"(e.g. row {first['row']}, col {first['col']}); give each sample's manifest once"
        )


def _check_train_samples(train_samples: Iterable, present: Iterable[str]) -> list[str]:
    wanted = list(dict.fromkeys(str(s).strip() for s in train_samples))
    available = sorted(set(present), key=natural_key)
    if not wanted or "" in wanted:
        raise InputError("--train-samples: expected a comma-separated list of sample ids, e.g. 3,4")
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise InputError(f"--train-samples: sample {', '.join(unknown)} not in the manifests; "
                         f"available samples: {', '.join(available)}")
    return wanted


def _sample_rng(seed: int, sample: str) -> np.random.Generator:
    # Seeded by (seed, sample id): adding or removing another sample never changes this one's blocks.
    return np.random.default_rng([int(seed), zlib.crc32(sample.encode())])


def _random_labels(keys: pd.DataFrame, fractions, seed: int) -> pd.Series:
    """Pooled random voxel split with exact floor-based counts (remainder to train)."""
    pool = keys.sort_values(list(KEY), kind="stable")  # input row order must not change the split
    n = len(pool)
    n_val = math.floor(n * fractions[1] + _EPS)
    n_test = math.floor(n * fractions[2] + _EPS)
    n_train = n - n_val - n_test
    order = np.random.default_rng(int(seed)).permutation(n)
    labels = np.empty(n, dtype=object)
    labels[order[:n_train]] = "train"
    labels[order[n_train:n_train + n_val]] = "val"
    labels[order[n_train + n_val:]] = "test"
    return pd.Series(labels, index=pool.index)


def _guard_band(rows: np.ndarray, cols: np.ndarray, sets: np.ndarray, guard: int) -> np.ndarray:
    """True for voxels within Chebyshev distance `guard` of a voxel of another set (same sample)."""
    from scipy import ndimage

    if guard == 0:
        return np.zeros(len(sets), dtype=bool)
    r, c = rows - rows.min(), cols - cols.min()
    grid = np.full((r.max() + 1, c.max() + 1), -1, dtype=np.int8)
    grid[r, c] = sets
    square = np.ones((2 * guard + 1, 2 * guard + 1), dtype=bool)
    near = np.stack([ndimage.binary_dilation(grid == s, structure=square)[r, c]
                     for s in range(len(EVALUATION_SETS))])
    near[sets, np.arange(len(sets))] = False  # a voxel's own set never makes it a gap
    return near.any(axis=0)


def _blocked_labels(keys: pd.DataFrame, fractions, seed: int, block_size: int, guard: int) -> pd.Series:
    """Per-sample blocked split: whole B x B blocks to one set, then a guard band of gap voxels."""
    bounds = np.cumsum(fractions)[:2]
    parts = []
    for sample, voxels in keys.groupby("sample", sort=True):
        rows, cols = voxels["row"].to_numpy(), voxels["col"].to_numpy()
        blocks = pd.DataFrame({"br": rows // block_size, "bc": cols // block_size})
        sizes = blocks.value_counts(sort=False).sort_index()  # blocks in grid order, then shuffled
        order = _sample_rng(seed, sample).permutation(len(sizes))
        shuffled = sizes.iloc[order]
        ends = np.cumsum(shuffled.to_numpy())
        midpoints = ends - shuffled.to_numpy() / 2.0
        block_set = pd.Series(np.searchsorted(bounds * len(voxels), midpoints, side="right"),
                              index=shuffled.index)
        sets = block_set.loc[list(zip(blocks["br"], blocks["bc"], strict=True))].to_numpy()
        names = np.array(EVALUATION_SETS, dtype=object)[sets]
        names[_guard_band(rows, cols, sets, guard)] = "gap"
        parts.append(pd.Series(names, index=voxels.index))
    return pd.concat(parts)


def assign_splits(frame: pd.DataFrame, *, train_samples: Iterable = ("3", "4"), strategy: str = "random",
                  fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0, block_size: int = 8,
                  guard: int = 1) -> pd.Series:
    """The split label of every row of a manifest frame (index aligned, name 'split').

    Labels: train | val | test for the training samples' patches (gap for the blocked split's guard
    band), heldout for every other sample. The result depends only on the set of (sample, row, col)
    keys and the options, not on row order. Raises InputError on bad options or keys.
    """
    fractions = check_fractions(fractions)
    _check_options(strategy, block_size, guard)
    keys = _check_frame(frame, "manifest")
    check_unique_keys(keys)
    wanted = _check_train_samples(train_samples, keys["sample"].unique())
    in_pool = keys["sample"].isin(wanted)
    labels = pd.Series("heldout", index=frame.index, dtype=object, name="split")
    if strategy == "random":
        assigned = _random_labels(keys[in_pool], fractions, seed)
    else:
        assigned = _blocked_labels(keys[in_pool], fractions, seed, int(block_size), int(guard))
    labels.loc[assigned.index] = assigned
    return labels


def count_splits(samples: pd.Series, labels: pd.Series) -> pd.DataFrame:
    """Patches per sample (rows, natural order) and split (columns: SPLITS, then total)."""
    table = pd.crosstab(samples.astype(str), labels).reindex(columns=list(SPLITS), fill_value=0)
    table = table.reindex(sorted(table.index, key=natural_key)).astype(int)
    table["total"] = table.sum(axis=1)
    table.index.name, table.columns.name = "sample", None
    return table


def _markdown(counts: pd.DataFrame, options: dict) -> str:
    header = ["sample", *counts.columns]
    lines = ["# Split", "", _describe(options), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for sample, row in counts.iterrows():
        lines.append(f"| {sample} | " + " | ".join(str(v) for v in row) + " |")
    lines.append("| all | " + " | ".join(str(v) for v in counts.sum()) + " |")
    if options["strategy"] == "blocked":
        pool = counts.loc[options["train_samples"]]
        gap, total = int(pool["gap"].sum()), int(pool["total"].sum())
        lines += ["", f"Guard band: {gap} of {total} training-sample voxels "
                      f"({100 * gap / max(total, 1):.1f} %) are gap, excluded from train, val and test."]
    return "\n".join(lines) + "\n"


def _describe(options: dict) -> str:
    text = (f"Strategy {options['strategy']}, training samples {', '.join(options['train_samples'])}, "
            f"fractions train/val/test {'/'.join(f'{f:g}' for f in options['fractions'])}, "
            f"seed {options['seed']}")
    if options["strategy"] == "blocked":
        text += f", blocks {options['block_size']} x {options['block_size']} voxels, guard {options['guard']}"
    return text + "."


def _read_all(manifests: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Concatenate the manifests; a voxel listed twice is an error naming the sample and the files."""
    from tqdm import tqdm

    frames = []
    for uri in tqdm(manifests, desc="reading manifests", unit="manifest", disable=len(manifests) < 4):
        frame = read_manifest(uri)
        check_columns(frame, frame.attrs.get("uri", str(uri)))
        _check_frame(frame, str(uri))
        frames.append(frame.assign(_source=str(uri)))
    frame = pd.concat(frames, ignore_index=True)
    keys = frame.loc[:, list(KEY)]
    repeated = keys.duplicated(keep=False)
    if repeated.any():
        sources = sorted(frame.loc[repeated, "_source"].unique())
        check_unique_keys(keys, where="manifests " + ", ".join(sources))
    return frame.drop(columns="_source"), [str(m) for m in manifests]


def split_manifests(manifests: Sequence[str], out: str, *, train_samples: Iterable = DEFAULTS.train_samples,
                    strategy: str = DEFAULTS.strategy, fractions: Sequence[float] = DEFAULTS.fractions,
                    seed: int = DEFAULTS.seed, block_size: int = DEFAULTS.block_size,
                    guard: int = DEFAULTS.guard, overwrite: bool = False) -> pd.DataFrame:
    """Split the patches of one or more ingest manifests and write OUT/split.{parquet,json,md}.

    split.parquet holds every input row (shard_uri absolute) plus `split`; it is written last, so
    its presence marks a complete output. Returns the counts per sample and split.
    """
    manifests = [str(m) for m in manifests]
    if not manifests:
        raise InputError("manifests: none given; expected one or more ingest manifests "
                         "(manifest.parquet or a folder holding one)")
    fractions = check_fractions(fractions)
    _check_options(strategy, block_size, guard)
    outputs.check_writable(out)
    frame, inputs = _read_all(manifests)
    labels = assign_splits(frame, train_samples=train_samples, strategy=strategy, fractions=fractions,
                           seed=seed, block_size=block_size, guard=guard)
    counts = count_splits(frame["sample"], labels)
    options = {"strategy": strategy,
               "train_samples": _check_train_samples(train_samples, frame["sample"].unique()),
               "fractions": list(fractions), "seed": int(seed)}
    if strategy == "blocked":
        options.update(block_size=int(block_size), guard=int(guard))
    info = {"options": options, "inputs": inputs,
            "counts": {s: {k: int(v) for k, v in row.items()} for s, row in counts.iterrows()}}
    with outputs.staged(out, overwrite=overwrite, commit_last=artifacts.SPLIT_TABLE) as stage:
        (stage / artifacts.SPLIT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        (stage / artifacts.SPLIT_REPORT).write_text(_markdown(counts, options))
        frame.assign(split=labels).to_parquet(stage / artifacts.SPLIT_TABLE, index=False)
    return counts
