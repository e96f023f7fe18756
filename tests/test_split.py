"""Tests for the split step: random and blocked splits, heldout samples, outputs, bad input, gs://, CLI."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histoxai import storage
from histoxai.cli import main
from histoxai.components.split.split import assign_splits, split_manifests
from histoxai.errors import InputError
from histoxai.manifest import COLUMNS, write_manifest


def make_manifest(sample: str, shape: tuple[int, int], seed: int = 0) -> pd.DataFrame:
    """A plausible ingest manifest: patches on an elliptical ROI of an MR grid, 64 records per shard."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    centre_r, centre_c = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    inside = ((rows - centre_r) / (shape[0] / 2)) ** 2 + ((cols - centre_c) / (shape[1] / 2)) ** 2 <= 1
    rows, cols = rows[inside], cols[inside]
    n = len(rows)
    md = 0.6 + 0.8 * np.sin(rows / 7.0) ** 2 + 0.02 * rng.standard_normal(n)
    cc = rng.poisson(120, n).astype(float)
    frame = pd.DataFrame({
        "sample": sample, "row": rows.astype(np.int64), "col": cols.astype(np.int64),
        "shard": [f"shards/shard-{i // 64:05d}.bin" for i in range(n)],
        "index": np.arange(n) % 64, "offset": (np.arange(n) % 64) * 40_000,
        "encoding": "png", "patch_size": 360,
        "MD": md, "FA": rng.uniform(0.05, 0.6, n), "FAIP": rng.uniform(0.05, 0.7, n), "CC": cc,
        "CD": cc / cc.max(), "SA": rng.uniform(0.0, 0.5, n),
    })
    assert list(frame.columns) == list(COLUMNS)
    return frame


@pytest.fixture
def manifests(tmp_path) -> dict[str, str]:
    """Samples 3 and 4 (training) and 5 (heldout), each in its own ingest folder."""
    shapes = {"3": (40, 48), "4": (33, 50), "5": (20, 24)}
    out = {}
    for i, (sample, shape) in enumerate(shapes.items()):
        folder = tmp_path / "ingest" / sample
        write_manifest(make_manifest(sample, shape, seed=i), folder / "manifest.parquet")
        out[sample] = str(folder)
    return out


def pooled_frame(manifests: dict[str, str]) -> pd.DataFrame:
    from histoxai.manifest import read_manifest

    return pd.concat([read_manifest(m) for m in manifests.values()], ignore_index=True)


def test_random_fractions_are_exact_and_files_complete(manifests, tmp_path):
    out = tmp_path / "split"
    counts = split_manifests(list(manifests.values()), str(out), seed=3)
    frame = pooled_frame(manifests)
    n = int((frame["sample"].isin(["3", "4"])).sum())
    n_val, n_test = math.floor(n * 0.2), math.floor(n * 0.2)
    pool = counts.loc[["3", "4"]].sum()
    assert (pool["train"], pool["val"], pool["test"]) == (n - n_val - n_test, n_val, n_test)
    assert pool["heldout"] == 0 and counts["gap"].sum() == 0
    assert counts.loc["5", "heldout"] == counts.loc["5", "total"] == (frame["sample"] == "5").sum()

    written = pd.read_parquet(out / "split.parquet")
    assert len(written) == len(frame)
    assert set(written.columns) >= set(COLUMNS) | {"shard_uri", "split"}
    assert all(Path(u).is_absolute() and Path(u).parent.parent == Path(manifests[s])
               for u, s in zip(written["shard_uri"], written["sample"], strict=True))
    by_file = written.groupby(["sample", "split"]).size().to_dict()
    assert by_file == {(s, k): v for (s, k), v in counts.drop(columns="total").stack().items() if v}
    info = json.loads((out / "split.json").read_text())
    assert info["options"] == {"strategy": "random", "train_samples": ["3", "4"],
                               "fractions": [0.6, 0.2, 0.2], "seed": 3}
    assert info["counts"]["3"]["val"] == counts.loc["3", "val"]
    table = (out / "split.md").read_text()
    assert f"| 5 | 0 | 0 | 0 | {counts.loc['5', 'heldout']} |" in table


@pytest.mark.parametrize("n", [1, 7, 10, 101])
def test_random_counts_floor_with_remainder_to_train(n):
    frame = pd.DataFrame({"sample": "3", "row": np.arange(n), "col": np.zeros(n, dtype=int)})
    labels = assign_splits(frame, train_samples=["3"], fractions=(0.5, 0.3, 0.2))
    got = labels.value_counts().reindex(["train", "val", "test"], fill_value=0).tolist()
    assert got == [n - math.floor(0.3 * n) - math.floor(0.2 * n), math.floor(0.3 * n), math.floor(0.2 * n)]


@pytest.mark.parametrize("strategy", ["random", "blocked"])
def test_seed_reproducible_and_independent_of_row_order(manifests, strategy):
    frame = pooled_frame(manifests)
    first = assign_splits(frame, strategy=strategy, seed=11)
    shuffled = frame.sample(frac=1.0, random_state=5)
    again = assign_splits(shuffled, strategy=strategy, seed=11)
    assert again.reindex(frame.index).equals(first)
    other = assign_splits(frame, strategy=strategy, seed=12)
    assert not other.equals(first)
    assert (other == "heldout").equals(first == "heldout")


def _neighbour_labels(frame: pd.DataFrame, labels: pd.Series, distance: int):
    """(label, neighbour label) for every pair of voxels of one sample within Chebyshev `distance`."""
    where = {(s, r, c): lab for s, r, c, lab in zip(frame["sample"], frame["row"], frame["col"], labels,
                                                   strict=True)}
    for (s, r, c), lab in where.items():
        for dr in range(-distance, distance + 1):
            for dc in range(-distance, distance + 1):
                other = where.get((s, r + dr, c + dc))
                if other is not None and (dr, dc) != (0, 0):
                    yield lab, other


@pytest.mark.parametrize("guard", [1, 2])
def test_blocked_guard_band_separates_sets(manifests, guard):
    frame = pooled_frame(manifests)
    labels = assign_splits(frame, strategy="blocked", block_size=6, guard=guard, seed=1)
    evaluation = {"train", "val", "test"}
    for lab, other in _neighbour_labels(frame, labels, guard):
        if lab in evaluation and other in evaluation:
            assert lab == other, f"{lab} voxel within {guard} of a {other} voxel"
    # Without a guard band the same seed gives the same blocks; the band removes exactly the
    # voxels within `guard` of another set, no more.
    bare = assign_splits(frame, strategy="blocked", block_size=6, guard=0, seed=1)
    assert (bare != "gap").all()
    kept = labels != "gap"
    assert labels[kept].equals(bare[kept])
    near_other = set()
    where = {(s, r, c): lab for s, r, c, lab in zip(frame["sample"], frame["row"], frame["col"], bare,
                                                   strict=True)}
    for (s, r, c), lab in where.items():
        if lab in evaluation and any(where.get((s, r + dr, c + dc), lab) not in (lab, "heldout")
                                     for dr in range(-guard, guard + 1) for dc in range(-guard, guard + 1)):
            near_other.add((s, r, c))
    gaps = {k for k, lab in zip(where, labels, strict=True) if lab == "gap"}
    assert gaps == near_other and gaps


def test_blocked_blocks_are_whole_and_fractions_approached(manifests):
    frame = pooled_frame(manifests)
    block = 6
    bare = assign_splits(frame, strategy="blocked", block_size=block, guard=0, seed=2)
    guarded = assign_splits(frame, strategy="blocked", block_size=block, guard=1, seed=2)
    for labels in (bare, guarded):
        kept = frame.assign(split=labels)[labels.isin(["train", "val", "test"])]
        per_block = kept.groupby(["sample", kept["row"] // block, kept["col"] // block])["split"].nunique()
        assert (per_block == 1).all()
    for sample in ("3", "4"):
        mine = bare[frame["sample"] == sample]
        for name, fraction in zip(("train", "val", "test"), (0.6, 0.2, 0.2), strict=True):
            # cumulative assignment: each set within one block of its target
            assert abs((mine == name).sum() - fraction * len(mine)) <= block * block
    pool = guarded[frame["sample"].isin(["3", "4"])]
    kept = pool[pool != "gap"]
    shares = kept.value_counts(normalize=True)
    assert abs(shares["train"] - 0.6) < 0.12 and abs(shares["val"] - 0.2) < 0.1
    assert abs(shares["test"] - 0.2) < 0.1
    assert (guarded[frame["sample"] == "5"] == "heldout").all()


def test_blocked_outputs_report_guard_band(manifests, tmp_path):
    out = tmp_path / "blocked"
    counts = split_manifests(list(manifests.values()), str(out), strategy="blocked", train_samples=("4",),
                             seed=4)
    assert (counts.loc[["3", "5"], "heldout"] == counts.loc[["3", "5"], "total"]).all()
    assert counts.loc["4", "gap"] > 0 and counts.loc["4", "heldout"] == 0
    info = json.loads((out / "split.json").read_text())
    assert info["options"]["block_size"] == 8 and info["options"]["guard"] == 1
    assert info["counts"]["4"]["gap"] == counts.loc["4", "gap"]
    table = (out / "split.md").read_text()
    assert f"Guard band: {counts.loc['4', 'gap']} of {counts.loc['4', 'total']}" in table


@pytest.mark.parametrize("kwargs, message", [
    ({"train_samples": ("3", "7")}, "sample 7 not in the manifests; available samples: 3, 4, 5"),
    ({"fractions": (0.5, 0.2, 0.2)}, "--fractions 0.5,0.2,0.2: the fractions must sum to 1"),
    ({"fractions": (1.2, -0.1, -0.1)}, "each fraction must be a number >= 0"),
    ({"fractions": (0.5, 0.5)}, "expected three numbers"),
    ({"strategy": "blocked", "block_size": 0}, "--block-size 0"),
    ({"strategy": "blocked", "guard": -1}, "--guard -1"),
])
def test_bad_options_raise_and_write_nothing(manifests, tmp_path, kwargs, message):
    out = tmp_path / "split"
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        split_manifests(list(manifests.values()), str(out), **kwargs)
    assert not out.exists() and not list(tmp_path.glob(".split*"))


def test_bad_manifests_raise_and_write_nothing(manifests, tmp_path):
    out = tmp_path / "split"
    with pytest.raises(InputError, match="none given"):
        split_manifests([], str(out))
    copy = tmp_path / "copy" / "manifest.parquet"
    write_manifest(make_manifest("4", (33, 50), seed=9).iloc[100:140], copy)
    repeated = r"copy/manifest\.parquet, .*ingest/4: sample '4' has voxels listed more than once"
    with pytest.raises(InputError, match=repeated):
        split_manifests([*manifests.values(), str(copy)], str(out))
    other = tmp_path / "other.parquet"
    pd.DataFrame({"sample": ["3"], "x": [1.0]}).to_parquet(other)
    with pytest.raises(InputError, match=r"other\.parquet: manifest lacks columns"):
        split_manifests([manifests["3"], str(other)], str(out))
    with pytest.raises(InputError, match="missing.*not found"):
        split_manifests([str(tmp_path / "missing")], str(out))
    assert not out.exists()
    # an existing output is kept unless overwrite is asked for
    split_manifests(list(manifests.values()), str(out))
    with pytest.raises(InputError, match="already exists"):
        split_manifests(list(manifests.values()), str(out), seed=1)
    split_manifests(list(manifests.values()), str(out), seed=1, overwrite=True)
    assert json.loads((out / "split.json").read_text())["options"]["seed"] == 1


def test_assign_splits_rejects_bad_frames():
    frame = pd.DataFrame({"sample": ["3", "3"], "row": [1, 1], "col": [2, 2]})
    with pytest.raises(InputError, match="sample '3' has voxels listed more than once"):
        assign_splits(frame, train_samples=["3"])
    with pytest.raises(InputError, match="column 'row' must hold integer"):
        assign_splits(frame.assign(row=[1.5, 2.5]), train_samples=["3"])


def test_gcs_in_and_out(manifests, gcs_bucket):
    uris = []
    for sample, folder in manifests.items():
        uri = f"{gcs_bucket}/ingest/{sample}/manifest.parquet"
        storage.upload_file(Path(folder) / "manifest.parquet", uri)
        uris.append(uri if sample != "5" else uri.rsplit("/", 1)[0])  # a file URI and a folder URI
    out = f"{gcs_bucket}/runs/split"
    counts = split_manifests(uris, out, strategy="blocked", seed=0)
    written = pd.read_parquet(io.BytesIO(storage.read_bytes(f"{out}/split.parquet")))
    assert written["shard_uri"].str.startswith(f"{gcs_bucket}/ingest/").all()
    assert written.groupby("split").size().to_dict() == {k: v for k, v in counts.sum().items()
                                                         if v and k != "total"}
    assert json.loads(storage.read_text(f"{out}/split.json"))["inputs"] == uris
    with pytest.raises(InputError, match="already exists"):
        split_manifests(uris, out)
    with pytest.raises(InputError, match="not found"):
        split_manifests([f"{gcs_bucket}/nothing/here"], f"{gcs_bucket}/runs/other")
    assert not storage.list_files(f"{gcs_bucket}/runs/other")


def test_cli(manifests, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["split", *manifests.values(), "--train-samples", "3,4", "--strategy", "blocked",
                 "--block-size", "4", "--seed", "2", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "gap" in printed
    lines = {line.split()[0]: line.split()[1:] for line in printed.splitlines() if line.split()}
    assert lines["5"][3] == lines["5"][5]  # heldout == total
    assert json.loads((out / "split.json").read_text())["options"]["block_size"] == 4

    bad = str(tmp_path / "x")
    assert main(["split", *manifests.values(), "--fractions", "0.6,0.3,0.2", "--out", bad]) == 2
    assert "--fractions 0.6,0.3,0.2" in capsys.readouterr().err
    assert main(["split", *manifests.values(), "--train-samples", "3,,4", "--out", bad]) == 2
    assert "--train-samples '3,,4'" in capsys.readouterr().err
    assert main(["split", "--out", str(tmp_path / "x")]) == 2
    assert "none given" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
