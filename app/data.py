"""The review app's data layer: the explain and evaluate outputs of a run as tables, and patches and maps read
one page at a time.

Maps are read only through the explain step's store (`open_maps`, `MapReader.read`); patch images by one
ranged read per record (`shards.read_record`) at the location the run's manifests give (falling back to
the one the maps table recorded), so a run folder that was moved still shows its patches. Every file
is resolved (symbolic links followed) and checked against the app's root before it is read or even looked
for (`runs.ensure_within`, the one check for every read); one outside it is an InputError naming it. No
Streamlit here: the caches live in `cache.py`.
"""

from __future__ import annotations

import dataclasses
import io
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from histoxai import artifacts, colour, storage
from histoxai.app import runs
from histoxai.errors import InputError
from histoxai.manifest import KEY, TARGETS, natural_key, read_manifest
from histoxai.saliency import store

PATCH_LOCATION = ("shard_uri", "offset", "encoding", "patch_size")
GROUP = ("model", "target", "method", "setting", "score")
# sort choice -> (column, by absolute value)
SORTS = {"index": ("patch", False), "y": ("y", False), "ŷ": ("y_hat", False), "Δ": ("delta", False),
         "|Δ|": ("delta", True), "rΔ": ("rdelta", False), "|rΔ|": ("rdelta", True)}
RANGE_MAPS = 128  # maps sampled for a dataset-wide display range
RANGE_PIXELS = 64  # each sampled map contributes about RANGE_PIXELS^2 values (a strided view)
READ_THREADS = 8  # parallel ranged reads: most of a page's time on gs:// is request latency


# ---- tables ----

def open_maps(explain_uri: str, root: str) -> store.MapReader:
    runs.ensure_within(root, storage.join(explain_uri, artifacts.MAPS_TABLE), what="maps table")
    return store.open_maps(explain_uri)


def model_names(explain_uris, label, root: str) -> dict[str, str]:
    """explain folder -> the name of the model it explains (its folder name, from explain.json); folders
    of different models that share a name are told apart by their place in the run."""
    models = {}
    for uri in explain_uris:
        runs.ensure_within(root, storage.join(uri, artifacts.EXPLAIN_INFO), what="explain summary")
        try:
            summary = artifacts.read_explain_info(uri)
            model = str(summary.get("model", "")).rstrip("/")
        except (InputError, ValueError):
            model = ""
        models[uri] = model
    names = {}
    for uri, model in models.items():
        stem = model.removesuffix("/" + artifacts.MODEL_FILE).removesuffix(".keras")
        names[uri] = stem.rsplit("/", 1)[-1] or label(uri)
    for uri, name in names.items():
        if len({models[u] for u, n in names.items() if n == name}) > 1:
            names[uri] = label(uri)
    return names


def load_manifests(index: runs.RunIndex, root: str) -> pd.DataFrame:
    """Every patch of the run's split and ingest manifests (a split's row wins over an ingest's)."""
    frames = []
    for folder in (*index.split, *index.ingest):
        name = artifacts.SPLIT_TABLE if folder in index.split else artifacts.MANIFEST
        frame = read_manifest(runs.ensure_within(root, storage.join(folder, name), what="patch manifest"))
        keep = [c for c in (*KEY, *PATCH_LOCATION, "split", *TARGETS) if c in frame.columns]
        frames.append(frame[keep])
    if not frames:
        return pd.DataFrame(columns=[*KEY, *PATCH_LOCATION])
    return pd.concat(frames, ignore_index=True).drop_duplicates(list(KEY), keep="first")


def maps_table(readers: dict[str, store.MapReader], names: dict[str, str], manifests: pd.DataFrame):
    """One row per map over all explain folders: the store's columns plus source (the folder), model and
    patch (a number per patch, stable across targets and methods: the rank of sample, row, col)."""
    frames = [reader.table.assign(source=uri, model=names[uri]) for uri, reader in readers.items()]
    if not frames:
        return pd.DataFrame(columns=[*KEY, *GROUP, "patch", "source", "map_id"])
    table = pd.concat(frames, ignore_index=True)
    table = table.drop_duplicates([*GROUP, *KEY], keep="first")
    keys = table[list(KEY)].drop_duplicates()
    sample_rank = {s: i for i, s in enumerate(sorted(keys["sample"].unique(), key=natural_key))}
    keys = keys.iloc[np.lexsort((keys["col"].to_numpy(), keys["row"].to_numpy(),
                                 keys["sample"].map(sample_rank).to_numpy()))]
    keys = keys.assign(patch=np.arange(len(keys), dtype=np.int64))
    table = table.merge(keys, on=list(KEY), how="left")
    if len(manifests):
        located = table[list(KEY)].merge(manifests[[*KEY, *PATCH_LOCATION]], on=list(KEY), how="left")
        known = located["shard_uri"].notna().to_numpy()
        for column in PATCH_LOCATION:
            table[column] = np.where(known, located[column].to_numpy(), table[column].to_numpy())
        table = table.astype({"offset": np.int64, "patch_size": np.int64})
    return table.reset_index(drop=True)


def trust_table(explain_uris, names: dict[str, str], root: str) -> pd.DataFrame:
    """The trust measures of every explain folder that has them, with the model's name."""

    frames = []
    for uri in explain_uris:
        path = runs.ensure_within(root, storage.join(uri, artifacts.TRUST_TABLE), what="trust table")
        if storage.exists(path):
            trust = storage.read_parquet(path, "the explain step's trust table")
            frames.append(trust.assign(model=names[uri]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(GROUP))


# ---- choices and filters ----

def setting_params(setting: str) -> dict[str, str]:
    """'sigma=0.2,n=30' -> {'sigma': '0.2', 'n': '30'} (a layer list 'layers=a,b' keeps its commas)."""
    params: dict[str, str] = {}
    last = None
    for item in (setting or "").split(","):
        key, sep, value = item.partition("=")
        if sep:
            params[key], last = value, key
        elif last is not None:
            params[last] += "," + item
    return params


@dataclasses.dataclass(frozen=True)
class Selection:
    """What the sidebar chose: one model x target x method x setting x score, and filters."""

    model: str
    target: str
    method: str
    setting: str
    score: str
    samples: tuple[str, ...] = ()  # empty: all
    y: tuple[float, float] | None = None  # None: no filter (rows with NaN are kept)
    delta: tuple[float, float] | None = None
    rdelta: tuple[float, float] | None = None
    sort: str = "index"
    descending: bool = False


def group_rows(table: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """All maps of the selection's model, target, method, setting and score (no filters)."""
    mask = np.ones(len(table), bool)
    for column in GROUP:
        mask &= (table[column] == getattr(selection, column)).to_numpy()
    return table[mask]


def select(table: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """The maps that pass the selection's filters, in its sort order (NaN last, ties by patch)."""
    rows = group_rows(table, selection)
    if selection.samples:
        rows = rows[rows["sample"].isin(selection.samples)]
    for column in ("y", "delta", "rdelta"):
        bounds = getattr(selection, column)
        if bounds is not None:
            values = rows[column]
            rows = rows[(values >= bounds[0]) & (values <= bounds[1])]
    if selection.sort not in SORTS:
        raise InputError(f"sort {selection.sort!r}: expected one of {', '.join(SORTS)}")
    column, absolute = SORTS[selection.sort]
    keys = rows[column].abs() if absolute else rows[column]
    keys = -keys.to_numpy() if selection.descending else keys.to_numpy()
    order = np.lexsort((rows["patch"].to_numpy(), keys))
    return rows.iloc[order]


def page_count(rows: int, per_page: int) -> int:
    return max(1, math.ceil(rows / per_page))


def page_of(view: pd.DataFrame, page: int, per_page: int) -> pd.DataFrame:
    """Rows of one page (1-based); a page past the end is the last page."""
    page = min(max(1, page), page_count(len(view), per_page))
    return view.iloc[(page - 1) * per_page:page * per_page]


# ---- patches and maps ----

def read_patch(location: tuple, root: str) -> np.ndarray:
    """uint8 (S, S, 3) patch from (shard_uri, offset, encoding, patch_size)."""
    from histoxai.shards import decode_image, read_record

    shard_uri, offset, encoding, size = location
    path = runs.ensure_within(root, shard_uri, what="patch shard")
    try:
        return decode_image(read_record(path, int(offset)), encoding, int(size))
    except ValueError as err:
        raise InputError(f"{shard_uri}: record at byte {offset} unreadable ({err})") from err


def read_map(readers: dict[str, store.MapReader], source: str, map_id: int, root: str) -> np.ndarray:
    reader = readers[source]
    runs.ensure_within(root, storage.join(source, str(reader.table.at[int(map_id), "map_file"])),
                       what="map file")
    return reader.read(int(map_id))


def patch_location(row) -> tuple:
    return tuple(row[c] for c in PATCH_LOCATION)


def read_tiles(tiles: list[tuple], readers: dict[str, store.MapReader], root: str) -> list:
    """(patch, map) for each (shard_uri, offset, encoding, patch_size, source, map_id), read in parallel;
    a map of None (source None) gives the patch alone."""
    def one(tile):
        patch = read_patch(tile[:4], root)
        source, map_id = tile[4:]
        return patch, (read_map(readers, source, map_id, root) if source is not None else None)

    with ThreadPoolExecutor(READ_THREADS) as pool:
        return list(pool.map(one, tiles))


def display_range(readers: dict[str, store.MapReader], rows: pd.DataFrame, root: str,
                  count: int = RANGE_MAPS, seed: int = 0) -> tuple[float, float]:
    """Dataset-wide display range: the colour.PERCENTILES of the values of up to `count` maps of `rows`
    (a seeded random choice; every k-th pixel of large maps), by `store.display_range`."""
    if rows.empty:
        return 0.0, 0.0
    chosen = rows.iloc[np.sort(np.random.default_rng(seed).choice(len(rows), min(count, len(rows)),
                                                                  replace=False))]
    refs = list(zip(chosen["source"], chosen["map_id"], strict=True))
    with ThreadPoolExecutor(READ_THREADS) as pool:
        maps = list(pool.map(lambda ref: read_map(readers, ref[0], ref[1], root), refs))
    strides = [max(1, max(m.shape) // RANGE_PIXELS) for m in maps]
    return store.display_range([m[::k, ::k] for m, k in zip(maps, strides, strict=True)],
                               percentiles=colour.PERCENTILES)


def nuclei_masks(phantom_dirs, keys: list[tuple], size: int, root: str) -> dict[tuple, np.ndarray]:
    """(sample, row, col) -> bool (size, size) true nuclei mask, for patches of phantom samples found
    under the run (others are left out)."""
    from histoxai import layout
    from histoxai.saliency.trust import phantom_masks

    masks: dict[tuple, np.ndarray] = {}
    for folder in phantom_dirs:
        runs.ensure_within(root, folder, what="phantom folder")
        samples = {k[0] for k in keys if k not in masks}
        for sample in samples:  # the sample names come from the maps table: each path is checked
            for name in (layout.TRUTH_TARGETS, layout.TRUTH_LABELS):
                runs.ensure_within(root, storage.join(folder, sample, name), what="phantom truth")
        have = {s for s in samples if storage.exists(storage.join(folder, s, layout.TRUTH_TARGETS))}
        wanted = pd.DataFrame([k for k in keys if k[0] in have and k not in masks], columns=list(KEY))
        if not wanted.empty:
            masks.update(phantom_masks(folder, wanted, size))
    return masks


# ---- evaluate outputs ----

def evaluate_maps(evaluate_uri: str) -> pd.DataFrame:
    """(model, sample, target, uri) of each measured/predicted/residual .npz of an evaluate output."""
    base = storage.join(evaluate_uri, "maps")
    rows = []
    for uri in storage.list_files(base):
        parts = uri[len(base) + 1:].split("/")
        if len(parts) == 3 and parts[2].endswith(".npz"):
            rows.append({"model": parts[0], "sample": parts[1], "target": parts[2][:-4], "uri": uri})
    return pd.DataFrame(rows, columns=["model", "sample", "target", "uri"])


def read_grid_maps(uri: str, root: str) -> dict[str, np.ndarray]:
    """measured, predicted, residual (rows x cols, NaN without a patch) from an evaluate .npz."""
    path = runs.ensure_within(root, uri, what="map file")
    with np.load(io.BytesIO(storage.read_bytes(path))) as arrays:
        missing = [k for k in ("measured", "predicted", "residual") if k not in arrays.files]
        if missing:
            raise InputError(f"{uri}: lacks arrays {missing}; expected the maps of `histoxai evaluate`")
        return {k: arrays[k] for k in ("measured", "predicted", "residual")}


# ---- explain --nuclei outputs: what drives the prediction ----

DRIVERS_FILES = (artifacts.DRIVERS_REPORT, artifacts.NUCLEI_DRIVERS, artifacts.CONCEPTS_TABLE,
                 artifacts.RESPONSE_CURVES, artifacts.RESPONSE_PLOT, artifacts.DRIVERS_PLOT)
NUCLEI_COLUMNS = ("sample", "row", "col", "target", "method", "setting", "score", "label", "outline",
                  "centroid_x", "centroid_y", "area_px", "area_um2", "relevance_mean", "positive_mean")


def drivers_outputs(explain_uri: str, root: str) -> dict[str, object]:
    """The `explain --nuclei` outputs an explain folder holds (the nuclei table aside, see `read_nuclei`):
    file name -> DataFrame (.parquet), str (drivers.md) or bytes (.png); absent files are left out."""
    found: dict[str, object] = {}
    for name in DRIVERS_FILES:
        path = runs.ensure_within(root, storage.join(explain_uri, name), what="explain output")
        if not storage.exists(path):
            continue
        if name.endswith(".parquet"):
            found[name] = storage.read_parquet(path, f"the {name} of `histoxai explain --nuclei`")
        else:
            found[name] = storage.read_text(path) if name.endswith(".md") else storage.read_bytes(path)
    return found


def read_nuclei(explain_uri: str, root: str) -> pd.DataFrame | None:
    """The explain folder's nuclei table (NUCLEI_COLUMNS it has), None when it has none."""
    path = runs.ensure_within(root, storage.join(explain_uri, artifacts.NUCLEI_TABLE), what="nuclei table")
    if not storage.exists(path):
        return None
    try:
        import pyarrow.parquet as pq

        content = storage.read_bytes(path)
        names = set(pq.read_schema(io.BytesIO(content)).names)
        frame = pd.read_parquet(io.BytesIO(content), columns=[c for c in NUCLEI_COLUMNS if c in names])
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise InputError(f"{path}: not a readable Parquet table ({err}); expected the nuclei table of "
                         "`histoxai explain --nuclei`") from err
    return frame.assign(sample=frame["sample"].astype(str)) if "sample" in frame.columns else frame


def phantom_sample(phantom_dirs, sample: str, root: str) -> str | None:
    """The folder of a phantom sample under the run with its whole truth (targets, labels, nuclei
    table), None when there is none."""
    from histoxai import layout

    for folder in phantom_dirs:
        sample_dir = runs.ensure_within(root, storage.join(folder, str(sample)), what="phantom sample")
        paths = [runs.ensure_within(root, storage.join(sample_dir, name), what="phantom truth")
                 for name in (layout.TRUTH_TARGETS, layout.TRUTH_LABELS, layout.TRUTH_NUCLEI)]
        if all(storage.exists(p) for p in paths):
            return sample_dir
    return None
