"""Ingestion of one sample: voxel-aligned patches, their targets and features, image shards and a manifest.

One patch per MR voxel, as in the original study: the slide block of voxel (i, j) is rows
i*bh:(i+1)*bh, columns j*bw:(j+1)*bw with (bh, bw) = floor(slide size / grid size). A voxel becomes a
patch only if it passes every rule in RULES; each dropped voxel is counted under the first rule it
fails. The slide and its full-resolution mask are read one voxel row at a time, so memory stays
bounded whatever the slide's size; the structure anisotropy is computed from the same bands.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoxai import artifacts, layout, manifest, outputs, shards
from histoxai.components.ingest import qc
from histoxai.components.ingest.inputs import (
    Sample,
    check_sample_id,
    open_sample,
    read_errors_named,
    sample_name,
)
from histoxai.components.ingest.params import DEFAULTS
from histoxai.components.ingest.structure import StructureStream
from histoxai.errors import InputError
from histoxai.patches import resize_block

RULES = ("roi", "erosion", "dhe_mask", "he_mask", "nan_target")
_PASSED = -1  # rule code of a voxel that passed every rule checked so far


def rule_text(erosion: int) -> dict[str, str]:
    return {
        "roi": "MR.ROI is not 1",
        "erosion": f"a voxel {erosion} away up, down, left or right is outside the ROI (or the grid)",
        "dhe_mask": "dHE_mask is not 1",
        "he_mask": "some pixel of the block is outside HE_mask (not 1)",
        "nan_target": "MD, FA or (if present) FAIP is NaN",
    }


def eroded_roi(in_roi: np.ndarray, erosion: int) -> np.ndarray:
    """The original's erosion: a voxel stays if the voxels `erosion` away up/down/left/right are in ROI."""
    if erosion == 0:
        return in_roi.copy()
    rows, cols = in_roi.shape
    padded = np.pad(in_roi, erosion, constant_values=False)  # outside the grid = outside the ROI
    keep = in_roi.copy()
    for dy, dx in ((-erosion, 0), (erosion, 0), (0, -erosion), (0, erosion)):
        keep &= padded[erosion + dy: erosion + dy + rows, erosion + dx: erosion + dx + cols]
    return keep


def grid_rule_codes(maps: dict[str, np.ndarray], dhe_mask: np.ndarray, erosion: int) -> np.ndarray:
    """Per voxel, the index in RULES of the first failing grid-level rule (roi, erosion, dhe_mask) or -1."""
    in_roi = maps["ROI"] == 1
    codes = np.full(in_roi.shape, _PASSED, np.int8)
    rules = (("roi", in_roi), ("erosion", eroded_roi(in_roi, erosion)), ("dhe_mask", dhe_mask == 1))
    for rule, passes in rules:
        codes[(codes == _PASSED) & ~passes] = RULES.index(rule)
    return codes


def nan_targets(maps: dict[str, np.ndarray], faip_present: bool) -> np.ndarray:
    names = ("MD", "FA", "FAIP") if faip_present else ("MD", "FA")
    return np.logical_or.reduce([~np.isfinite(maps[n]) for n in names])


def nuclei_per_voxel(centroids: np.ndarray, grid: tuple[int, int], block: tuple[int, int]) -> np.ndarray:
    """Centroids inside each block, half-open pixel intervals [j*bw, (j+1)*bw) x [i*bh, (i+1)*bh)."""
    (rows, cols), (bh, bw) = grid, block
    # searchsorted on the exact integer edges: no rounding from dividing by the block size
    i = np.searchsorted(np.arange(rows + 1) * bh, centroids[:, 1], side="right") - 1
    j = np.searchsorted(np.arange(cols + 1) * bw, centroids[:, 0], side="right") - 1
    inside = (i >= 0) & (i < rows) & (j >= 0) & (j < cols)
    return np.bincount(i[inside] * cols + j[inside], minlength=rows * cols).reshape(rows, cols)


def block_inside_mask(mask_band: np.ndarray, cols: int, bw: int) -> np.ndarray:
    """Per block of one voxel row: True if every pixel of the block is 1 in the tissue mask."""
    inside = mask_band[:, : cols * bw] == 1
    return inside.reshape(len(inside), cols, bw).all(axis=(0, 2))


def encode_patch(block: np.ndarray, patch_size: int, encoding: str) -> bytes:
    """Resize one block to patch_size^2 (Pillow bicubic, antialiased when shrinking) and encode it."""
    return shards.encode_image(resize_block(block, patch_size), encoding)


class ShardSet:
    """Appends patches to shards/<sample>-00000.tfrecord, -00001, ... of at most `size` records each."""

    def __init__(self, folder: Path, sample_id: str, size: int):
        self.folder, self.sample_id, self.size = folder, sample_id, size
        self.names: list[str] = []
        self._writer: shards.ShardWriter | None = None

    def append(self, payload: bytes) -> tuple[str, int, int]:
        if self._writer is None or self._writer.count >= self.size:
            self.close()
            name = f"shards/{self.sample_id}-{len(self.names):05d}.tfrecord"
            self.folder.joinpath(name).parent.mkdir(parents=True, exist_ok=True)
            self._writer = shards.ShardWriter(self.folder / name)
            self.names.append(name)
        index, offset = self._writer.append(payload)
        return self.names[-1], index, offset

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _no_candidates_error(sample: Sample, codes: np.ndarray, erosion: int) -> InputError:
    counts = {rule: int((codes == k).sum()) for k, rule in enumerate(RULES[:3])}
    last = max((rule for rule in counts if counts[rule]), key=RULES.index)
    where = {"roi": f"{sample.files[layout.MR_MAT]} (MR.ROI)",
             "erosion": f"{sample.files[layout.MR_MAT]} (MR.ROI eroded by {erosion} voxels)",
             "dhe_mask": f"{sample.files[layout.HE_MASK_MAT]} (dHE_mask)"}[last]
    dropped = ", ".join(f"{rule} {n}" for rule, n in counts.items())
    return InputError(f"{where}: no patch left; the {last} rule removed the last voxels "
                      f"(dropped: {dropped}); "
                      "expected some ROI voxels that survive erosion and lie in the downsampled tissue mask")


def _check_candidates(sample: Sample, codes: np.ndarray, nan: np.ndarray, erosion: int) -> None:
    candidates = codes == _PASSED
    if not candidates.any():
        raise _no_candidates_error(sample, codes, erosion)
    if nan[candidates].all():
        names = ("MD", "FA", "FAIP") if sample.faip_present else ("MD", "FA")
        fields = ", ".join(f"MR.{n}" for n in names if not np.isfinite(sample.maps[n][candidates]).all())
        raise InputError(f"{sample.files[layout.MR_MAT]}: {fields}: a target is NaN at all "
                         f"{int(candidates.sum())} voxels that pass the mask rules; expected measured values")


class StageClock:
    """Wall and CPU seconds per stage; CPU is per thread, so it stays meaningful on a busy machine."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - wall, time.thread_time() - cpu)

    def add(self, name: str, wall: float | None, cpu: float) -> None:
        with self._lock:  # worker threads add their encode CPU time too (their wall time overlaps)
            if wall is not None:
                self.wall[name] = self.wall.get(name, 0.0) + wall
            self.cpu[name] = self.cpu.get(name, 0.0) + cpu

    def summary(self) -> dict[str, dict[str, float]]:
        return {"wall_s": {k: round(v, 3) for k, v in self.wall.items()},
                "cpu_s": {k: round(v, 3) for k, v in self.cpu.items()}}


@dataclass
class StreamResult:
    records: list[tuple[int, int, str, int, int]]  # row, col, shard, index, offset
    sa: np.ndarray
    thumbnail: qc.Thumbnail
    shard_names: list[str]


def _stream(sample: Sample, stage: Path, sample_id: str, codes: np.ndarray, nan: np.ndarray,
            patch_size: int, encoding: str, shard_size: int, clock: StageClock) -> StreamResult:
    """Read the slide band by band: rules he_mask and nan_target, patches, SA and the thumbnail."""
    from tqdm import tqdm

    (rows, cols), (bh, bw) = sample.grid, sample.block
    in_roi = sample.maps["ROI"] == 1
    thumbnail = qc.Thumbnail(sample.grid, sample.block)
    shard_set = ShardSet(stage, sample_id, shard_size)
    records = []

    def encode(block):
        cpu = time.thread_time()
        payload = encode_patch(block, patch_size, encoding)
        clock.add("encode_workers", None, time.thread_time() - cpu)
        return payload

    # one worker per core this process may use (taskset and container CPU sets shrink it): they encode
    # patches and do most of SA's work (ISA-L, Pillow and NumPy release the GIL) while the main thread
    # reads the next row and adds SA's finished contributions into the voxel tensors
    workers = max(1, min(8, len(os.sched_getaffinity(0))))
    # progress in patches (voxels that passed the grid rules; a few may still fail he_mask or NaN)
    progress = tqdm(total=int((codes == _PASSED).sum()), desc=f"ingest {sample_id}", unit="patch")
    pending: deque[tuple[int, np.ndarray, list]] = deque()  # rows whose patches are being encoded

    def write_oldest() -> None:
        i, kept_cols, futures = pending.popleft()
        with clock.stage("encode"):  # only the wait that remains after the main thread's own work
            payloads = [f.result() for f in futures]
        with clock.stage("write"):
            for j, payload in zip(kept_cols, payloads, strict=True):
                records.append((i, int(j), *shard_set.append(payload)))
        progress.update(len(kept_cols))

    with ThreadPoolExecutor(workers) as pool, read_errors_named(sample), progress:
        sa_stream = StructureStream(sample.he_shape, sample.grid, sample.block, pool=pool)
        for i in range(rows):
            with clock.stage("read"):
                # kept as h5py's strided view: blocks and SA each copy only what they need
                band = sample.he.read_rows("HE", i * bh, (i + 1) * bh)
                candidates = codes[i] == _PASSED
                if candidates.any():
                    mask_band = sample.he_mask.read_rows("HE_mask", i * bh, (i + 1) * bh)
                    inside = block_inside_mask(mask_band, cols, bw)
                    codes[i, candidates & ~inside] = RULES.index("he_mask")
                    codes[i, (codes[i] == _PASSED) & nan[i]] = RULES.index("nan_target")
            progress.total -= int(candidates.sum() - (codes[i] == _PASSED).sum())  # he_mask/NaN drops
            kept_cols = np.flatnonzero(codes[i] == _PASSED)
            # the pool encodes this row's patches and does its SA work while this thread reads the
            # next row; at most two rows are in flight, so memory stays at a few bands
            pending.append((i, kept_cols, [pool.submit(encode, band[:, j * bw:(j + 1) * bw])
                                           for j in kept_cols]))
            with clock.stage("structure"):
                sa_stream.feed(band)
            with clock.stage("thumbnail"):
                thumbnail.add_band(i, band, codes[i] == _PASSED, in_roi[i] & (codes[i] != _PASSED))
            while len(pending) > 1:
                write_oldest()
        while pending:
            write_oldest()
        # rows below the grid still shape the smoothed tensor of the last voxel row
        start = rows * bh
        while start < sa_stream.rows_needed:
            stop = min(sa_stream.rows_needed, start + bh)
            with clock.stage("read"):
                band = sample.he.read_rows("HE", start, stop)
            with clock.stage("structure"):
                sa_stream.feed(band)
            start = stop
    shard_set.close()
    with clock.stage("structure"):
        sa = sa_stream.finish()
    return StreamResult(records, sa, thumbnail, shard_set.names)


def ingest_sample(sample_dir: str, out: str, *, sample_id: str | None = None,
                  patch_size: int = DEFAULTS.patch_size, erosion: int = DEFAULTS.erosion,
                  encoding: str = DEFAULTS.encoding, shard_size: int = DEFAULTS.shard_size,
                  overwrite: bool = False) -> dict:
    """Cut one sample folder (local or gs://) into patches; write shards, manifest and QC to `out`.

    Returns the counts that ingest.json holds. Raises InputError (and writes nothing) on bad input.
    """
    if patch_size < 1 or erosion < 0 or shard_size < 1:
        raise InputError(f"patch size {patch_size}, erosion {erosion}, shard size {shard_size}: expected "
                         "patch size >= 1, erosion >= 0, shard size >= 1")
    if encoding not in shards.ENCODINGS:
        raise InputError(f"encoding {encoding!r}: expected one of {', '.join(shards.ENCODINGS)}")
    sample_id = check_sample_id(sample_id) if sample_id else sample_name(str(sample_dir))
    clock = StageClock()
    started, started_cpu = time.perf_counter(), time.process_time()
    with outputs.staged(out, overwrite=overwrite, commit_last=artifacts.MANIFEST) as stage, \
            open_sample(sample_dir) as sample:
        codes = grid_rule_codes(sample.maps, sample.dhe_mask, erosion)
        nan = nan_targets(sample.maps, sample.faip_present)
        _check_candidates(sample, codes, nan, erosion)
        cc = nuclei_per_voxel(sample.centroids, sample.grid, sample.block)
        result = _stream(sample, stage, sample_id, codes, nan, patch_size, encoding, shard_size, clock)
        dropped = {rule: int((codes == k).sum()) for k, rule in enumerate(RULES)}
        if not result.records:
            raise InputError(
                f"{sample.files[layout.HE_MASK_MAT]} (HE_mask): no patch left; every voxel that passed "
                f"roi, erosion and dhe_mask has block pixels outside HE_mask ({dropped['he_mask']}) or NaN "
                f"targets in MR.mat ({dropped['nan_target']}); expected blocks fully inside the tissue mask")
        frame = _manifest_frame(sample, sample_id, result, cc, encoding, patch_size)
        counts = {
            "sample": sample_id, "sample_dir": sample.sample_dir, "files": sample.files,
            "mat_versions": sample.mat_versions, "grid": list(sample.grid),
            "he_shape": list(sample.he_shape), "block_px": list(sample.block), "patch_size": patch_size,
            "encoding": encoding, "erosion": erosion, "shard_size": shard_size, "voxels": int(codes.size),
            "kept": len(frame), "dropped": dropped, "nan_skipped": dropped["nan_target"],
            "faip_present": sample.faip_present, "nuclei": {
                "total": len(sample.centroids), "in_grid": int(cc.sum()), "max_per_voxel": int(cc.max())},
            "shards": len(result.shard_names),
            "ranges": qc.value_ranges(frame, manifest.TARGETS + manifest.FEATURES),
        }
        timing = clock.summary()
        timing["wall_s"]["total"] = round(time.perf_counter() - started, 3)
        timing["cpu_s"]["total_process"] = round(time.process_time() - started_cpu, 3)
        counts["timing"] = timing
        qc.write_report(stage, counts, rule_text(erosion), result.thumbnail)
        manifest.write_manifest(frame, stage / artifacts.MANIFEST)
    return counts


def _manifest_frame(sample: Sample, sample_id: str, result: StreamResult, cc: np.ndarray, encoding: str,
                    patch_size: int):
    import pandas as pd

    rows = np.array([r[0] for r in result.records], np.int64)
    cols = np.array([r[1] for r in result.records], np.int64)
    max_cc = cc.max()
    return pd.DataFrame({
        "sample": sample_id, "row": rows, "col": cols, "shard": [r[2] for r in result.records],
        "index": np.array([r[3] for r in result.records], np.int64),
        "offset": np.array([r[4] for r in result.records], np.int64),
        "encoding": encoding, "patch_size": np.int64(patch_size),
        "MD": sample.maps["MD"][rows, cols], "FA": sample.maps["FA"][rows, cols],
        "FAIP": sample.maps["FAIP"][rows, cols], "CC": cc[rows, cols].astype(np.float64),
        # no nucleus anywhere: density 0 rather than 0/0
        "CD": cc[rows, cols] / max_cc if max_cc else np.zeros(len(rows)),
        "SA": result.sa[rows, cols],
    }, columns=list(manifest.COLUMNS))
