"""Training in two phases (frozen backbone, then fine-tuning), resumable, with device-aware precision.

`train(config, data_uri, out_uri)` reads the split manifest, trains the Table 3.1 model for
config.targets and writes to OUT (local or gs://): model.keras, config.yaml (resolved), history.csv
(both phases, with a `phase` column), metrics.json (R² per target on train/val/test and n) and
tensorboard/. The results are built beside OUT and swapped in whole (gs://: uploaded, metrics.json last).
OUT/checkpoints/ holds the resume state, rewritten after each epoch: a killed run restarted with
the same OUT continues after its last finished epoch, in the phase it was in. Any other non-empty OUT
is refused without overwrite; a run that fails before its first checkpoint leaves no OUT behind.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from histoxai import artifacts, outputs, storage
from histoxai.checkpoint import CheckpointStore, prepare_out
from histoxai.config import TrainConfig, fit_to_patches
from histoxai.errors import InputError
from histoxai.provenance import device_name
from histoxai.reuse import training_fingerprint

PHASES = ("frozen", "finetune")
SPLITS_USED = ("train", "val", "test")
RESULT_FILES = (artifacts.MODEL_FILE, artifacts.MODEL_CONFIG, artifacts.TRAIN_HISTORY,
                artifacts.TRAIN_METRICS, artifacts.TENSORBOARD_DIR)
STOPPED_EXIT_CODE = 75  # --stop-after-epochs: the process ends as if preempted
EpochHook = Callable[[int, dict], None]  # on_epoch_end(epoch, logs)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What `auto` resolved to on this machine."""

    device: str
    gpus: int
    precision: str
    jit_compile: bool
    deterministic: bool


def resolve_runtime(config: TrainConfig) -> Runtime:
    """auto -> mixed_float16 + XLA on GPU (the thesis's setup); float32 without XLA on CPU, where
    both were measured slower; op determinism on CPU only (it slows or breaks some GPU kernels)."""
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    return Runtime(
        device=device_name(),
        gpus=gpus,
        precision=(config.precision if config.precision != "auto"
                   else "mixed_float16" if gpus else "float32"),
        jit_compile=config.jit_compile if config.jit_compile != "auto" else gpus > 0,
        deterministic=config.deterministic if config.deterministic != "auto" else gpus == 0,
    )


def seed_everything(seed: int, deterministic: bool) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def load_splits(data_uri: str, targets) -> dict:
    """Train/val/test rows of the split manifest; rows with a missing target are left out."""
    from histoxai import dataset
    from histoxai.manifest import read_manifest

    data_uri = artifacts.split_table(data_uri)
    frame = read_manifest(data_uri)
    dataset.check_targets(frame, targets, data_uri)
    out = {}
    for split in SPLITS_USED:
        rows = dataset.select_split(frame, split, data_uri)
        complete = rows[list(targets)].notna().all(axis=1)
        if not complete.all():
            print(f"{split}: leaving out {int((~complete).sum())} of {len(rows)} patches with no "
                  f"{'/'.join(targets)} value", flush=True)
        out[split] = rows[complete]
    for split in ("train", "val"):
        if out[split].empty:
            raise InputError(f"{data_uri}: no {split} patches with targets {list(targets)}; "
                             "expected a manifest split by `histoxai split`")
    return out


class _TensorBoardLog:
    """Epoch scalars in TensorBoard's format (tf.summary.write; the tensorboard package is optional)."""

    def __init__(self, log_dir: Path):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
        self._writers = {run: tf.summary.create_file_writer(str(log_dir / run))
                         for run in ("train", "validation")}

    def write(self, epoch: int, logs: dict, lr: float) -> None:
        tf = self._tf
        for key, value in {**logs, "learning_rate": lr}.items():
            run = "validation" if key.startswith("val_") else "train"
            with self._writers[run].as_default():
                tf.summary.write(f"epoch_{key.removeprefix('val_')}", tf.constant(float(value)),
                                 step=epoch, metadata=self._meta)
        for writer in self._writers.values():
            writer.flush()


def _epoch_callback(store, state: dict, config: TrainConfig, phase: str, max_epochs: int,
                    stop_after: int | None, counter: list, on_epoch_end: EpochHook | None = None):
    """Per epoch: history row, progress line, TensorBoard, early stopping, best weights, checkpoint,
    then the caller's hook (the tuning step reports to its pruner there)."""
    import keras

    from histoxai.model import current_learning_rate

    tensorboard = _TensorBoardLog(store.tensorboard_dir)
    started = {}

    class EpochEnd(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            started["t"] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = _named_logs(logs or {}, config.targets)
            lr = current_learning_rate(self.model)
            state["epoch"] += 1
            state["phase_epochs"] = epoch + 1
            score = _monitored(logs, config)
            improved = state["best_score"] is None or score < state["best_score"]
            if improved:
                state.update(best_score=score, best_epoch=state["epoch"], wait=0)
            else:
                state["wait"] += 1
            seconds = time.perf_counter() - started.get("t", time.perf_counter())
            state["history"].append({"epoch": state["epoch"], "phase": phase, "phase_epoch": epoch + 1,
                                     "learning_rate": lr, **logs, "seconds": seconds})
            shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(logs.items()))
            print(f"[{phase}] epoch {epoch + 1}/{max_epochs} (#{state['epoch']}) {shown} lr={lr:.3g} "
                  f"{seconds:.1f}s{' *best' if improved else ''}", flush=True)
            tensorboard.write(state["epoch"], logs, lr)
            if state["wait"] >= config.patience:
                self.model.stop_training = True
                print(f"[{phase}] early stop: {config.monitor} did not improve for {config.patience} "
                      f"epochs; best so far is epoch #{state['best_epoch']}", flush=True)
            state.update(store.save(state, model=self.model,
                                    best_weights=self.model.get_weights() if improved else None))
            if on_epoch_end is not None:
                on_epoch_end(state["epoch"], logs)
            counter[0] += 1
            if stop_after is not None and counter[0] >= stop_after:
                print(f"stopping after {counter[0]} epochs as asked (--stop-after-epochs)", flush=True)
                sys.stdout.flush()
                os._exit(STOPPED_EXIT_CODE)

    return EpochEnd()


def _named_logs(logs: dict, targets) -> dict[str, float]:
    """Keras names a single output's metrics 'r2', several outputs' 'MD_r2': always use the latter."""
    out = {}
    for key, value in logs.items():
        base = key.removeprefix("val_")
        if len(targets) == 1 and base == "r2":
            key = key.replace("r2", f"{targets[0]}_r2")
        out[key] = float(value)
    return out


def _monitored(logs: dict, config: TrainConfig) -> float:
    """The early-stopping score, lower is better."""
    if config.monitor == "val_loss":
        return logs["val_loss"]
    return -sum(logs[f"val_{t}_r2"] for t in config.targets) / len(config.targets)


def _fresh_state(config: TrainConfig, data_uri: str) -> dict:
    return {"config": config.to_dict(), "data": str(data_uri), "phase": PHASES[0], "phase_epochs": 0,
            "phase_done": False, "epoch": 0, "best_score": None, "best_epoch": None, "wait": 0,
            "history": [], "last": None, "best": None}


def _check_resumable(state: dict, config: TrainConfig, data_uri: str, out_uri: str) -> None:
    if state["config"] != config.to_dict():
        changed = sorted(k for k, v in config.to_dict().items() if state["config"].get(k) != v)
        raise InputError(f"{out_uri}: holds checkpoints of a training with another config (keys {changed} "
                         "differ); pass --overwrite to start over, or choose another --out")
    if state["data"] != str(data_uri):
        raise InputError(f"{out_uri}: holds checkpoints of a training on {state['data']}, not {data_uri}; "
                         "pass --overwrite to start over, or choose another --out")


def train(config: TrainConfig, data_uri: str, out_uri: str, *, overwrite: bool = False,
          stop_after_epochs: int | None = None, on_epoch_end: EpochHook | None = None,
          scored_splits: Sequence[str] = SPLITS_USED, reuse: str | None = None) -> dict:
    """Train (or resume) and publish the results; returns the metrics written to metrics.json.

    `scored_splits`: the splits whose R² the trained model is scored on (the others get None); a
    tuning trial scores only "val", so no test patch is predicted while hyperparameters are chosen.
    `reuse`: a finished training (e.g. the tuning study's best trial) published instead of training
    when it is this same training (histoxai/reuse.py); otherwise it is ignored, with a printed reason.

    `on_epoch_end(epoch, logs)` is called after each epoch's checkpoint with the run's epoch number
    (counted across both phases) and that epoch's metrics (`val_MD_r2`, `val_loss`, ...); an
    exception it raises ends the training (the tuning step prunes trials this way).
    """
    import pandas as pd
    import tensorflow as tf

    from histoxai import dataset
    from histoxai import model as models

    if not config.targets:
        raise InputError("no targets: give --targets (e.g. MD,FA or CC) or `targets` in the config")
    out_uri = str(out_uri)
    outputs.check_writable(out_uri)
    outputs.clear_stale_scratch()
    outputs.clear_stale_output(out_uri)
    existed = prepare_out(out_uri, overwrite, RESULT_FILES)
    runtime = resolve_runtime(config)
    seed_everything(config.seed, runtime.deterministic)
    print(f"device: {runtime.device}; precision {runtime.precision}, XLA {runtime.jit_compile}, "
          f"deterministic {runtime.deterministic}", flush=True)
    splits = load_splits(data_uri, config.targets)
    config = fit_to_patches(config, pd.concat([splits[s] for s in SPLITS_USED])["patch_size"], str(data_uri))
    if reuse is not None:
        from histoxai.reuse import reuse_finished

        reused = reuse_finished(reuse, config, splits, runtime, out_uri, scored_splits)
        if reused is not None:
            return reused
    store = CheckpointStore(out_uri)
    try:
        state = None if overwrite else store.load_state()
        if state is not None and state["epoch"] > 0:
            _check_resumable(state, config, data_uri, out_uri)
            where = "finished" if state["phase_done"] else f"epoch {state['phase_epochs']}"
            print(f"resuming after epoch {state['epoch']} ({state['phase']} phase, {where})", flush=True)
        else:
            state = _fresh_state(config, data_uri)
        strategy = tf.distribute.MirroredStrategy() if runtime.gpus > 1 else tf.distribute.get_strategy()
        used = dataset.reading_order(pd.concat([splits[s] for s in SPLITS_USED]))
        with dataset.local_shards(used) as local, dataset.read_errors(local):
            parts = {s: local.loc[local["split"] == s] for s in SPLITS_USED}
            # uint8 batches: the model casts them on its device (dataset.patch_dataset)
            train_ds = dataset.patch_dataset(parts["train"], image_size=config.image_size,
                                             batch_size=config.batch_size, targets=config.targets,
                                             shuffle_seed=config.seed, cache=config.cache, dtype="uint8")
            val_ds = dataset.patch_dataset(parts["val"], image_size=config.image_size,
                                           batch_size=config.batch_size, targets=config.targets,
                                           cache=config.cache, dtype="uint8")
            steps = math.ceil(len(parts["train"]) / config.batch_size)
            means = parts["train"][list(config.targets)].mean().to_dict()
            resuming = state["epoch"] > 0
            with strategy.scope():
                # Resumed weights come from the checkpoint: no need to fetch ImageNet weights again.
                build_config = dataclasses.replace(config, weights=None) if resuming else config
                net = models.build_model(build_config, target_means=means, precision=runtime.precision)
            _run_phases(net, store, state, config, runtime, strategy, (train_ds, val_ds, steps),
                        stop_after_epochs, on_epoch_end)
            metrics = score_model(net, parts, config, runtime, state["history"], state["best_epoch"],
                                  scored_splits)
            metrics["data_fingerprint"] = training_fingerprint(splits, config.targets)
        publish_results(out_uri, config, metrics, state["history"], store.tensorboard_dir,
                        lambda path: models.inference_model(net).save(path))
    except BaseException:
        store.discard_if_unused()  # a failure before the first epoch's checkpoint leaves nothing
        if not existed and not storage.is_gcs(out_uri) and os.path.isdir(out_uri) and not os.listdir(out_uri):
            os.rmdir(out_uri)
        raise
    finally:
        store.close()
    storage.remove(store.uri)  # the run finished: its resume state is no longer needed
    return metrics


def build_training_state(model, element_spec) -> None:
    """Create the compiled loss's, metrics' and optimizer's variables before `fit`, from the dataset's
    element_spec. Keras (TensorFlow backend, no distribution strategy) creates them inside the first
    trace of the train step, and a tf.function that creates variables is traced a second time: one
    needless trace per phase and tuning trial (minutes for a large backbone on a CPU). This calls
    Keras's own builder, a private method (keras is pinned in constraints.txt); tests/test_train.py
    counts the traces."""
    model._symbolic_build(data_batch=element_spec)


def _run_phases(net, store: CheckpointStore, state: dict, config: TrainConfig, runtime: Runtime, strategy,
                data: tuple, stop_after_epochs: int | None, on_epoch_end: EpochHook | None = None) -> None:
    """Phase 1 (frozen backbone) then phase 2 (fine-tuning), each until early stop or its epoch limit,
    skipping what the checkpoint says is done; ends with the best weights of the run restored."""
    from histoxai import model as models

    train_ds, val_ds, steps = data
    counter = [0]
    if state["phase"] == PHASES[-1] and state["phase_done"] and state["last"] is not None:
        # Killed after the last phase (e.g. while publishing): its final weights are all there is to do.
        with strategy.scope():
            models.set_phase(net, state["phase"], finetune_batchnorm=config.finetune_batchnorm)
            store.restore(state, net, optimizer=False)
    for phase in PHASES:
        max_epochs = config.frozen_epochs if phase == "frozen" else config.finetune_epochs
        if PHASES.index(phase) < PHASES.index(state["phase"]) or (
                phase == state["phase"] and state["phase_done"]):
            continue
        if phase != state["phase"]:
            state.update(phase=phase, phase_epochs=0, phase_done=False, wait=0)
        with strategy.scope():
            models.set_phase(net, phase, finetune_batchnorm=config.finetune_batchnorm)
            models.compile_model(net, config, steps_per_epoch=steps, jit_compile=runtime.jit_compile)
            if state["last"] is not None:
                # Mid-phase: weights and optimizer state; at a phase start: the weights so far.
                store.restore(state, net, optimizer=state["phase_epochs"] > 0)
        stopped_early = state["phase_epochs"] > 0 and state["wait"] >= config.patience
        if max_epochs > state["phase_epochs"] and not stopped_early:
            callback = _epoch_callback(store, state, config, phase, max_epochs, stop_after_epochs, counter,
                                       on_epoch_end)
            with strategy.scope():
                build_training_state(net, train_ds.element_spec)
            net.fit(train_ds, validation_data=val_ds, epochs=max_epochs, shuffle=False,
                    initial_epoch=state["phase_epochs"], verbose=0, callbacks=[callback])
        best = store.best_weights(state)
        if best is not None:
            net.set_weights(best)
        state["phase_done"] = True
        state.update(store.save(state, model=net))


def score_model(net, parts: dict, config: TrainConfig, runtime: Runtime, history: list[dict],
                best_epoch: int | None, scored_splits: Sequence[str]) -> dict:
    """metrics.json of a trained model: R² on each scored split (local rows), patch counts, epochs per
    phase (from the history rows), how it ran, and the code version that trained it."""
    from histoxai import dataset
    from histoxai.artifacts import code_version
    from histoxai.metrics import r2_score

    r2, n = {}, {}
    for split, rows in parts.items():
        n[split] = len(rows)
        if rows.empty or split not in scored_splits:
            r2[split] = {t: None for t in config.targets}
            continue
        predicted = dataset.predict(net, rows, batch_size=max(config.batch_size, 32))
        r2[split] = {t: r2_score(rows[t].to_numpy(), predicted[t].to_numpy()) for t in config.targets}
    epochs = {p: sum(1 for row in history if row["phase"] == p) for p in PHASES}
    return {"targets": list(config.targets), "r2": r2, "n": n, "epochs": epochs,
            "best_epoch": best_epoch, "monitor": config.monitor, "device": runtime.device,
            "precision": runtime.precision, "jit_compile": runtime.jit_compile,
            "deterministic": runtime.deterministic, "code_version": code_version()}


def publish_results(out_uri: str, config: TrainConfig, metrics: dict, history: list[dict],
                    tensorboard_dir: Path | None, save_model: Callable[[Path], None]) -> None:
    """Write a finished training's results to OUT whole (RESULT_FILES, metrics.json last); save_model(path)
    writes model.keras (a training saves its net, a reused training copies its file)."""
    import pandas as pd

    if storage.is_gcs(out_uri):  # results of an interrupted publish, or old ones under --overwrite
        for name in RESULT_FILES:
            storage.remove(storage.join(out_uri, name))
    # Local: built beside OUT and swapped in whole (the checkpoints leave with the old folder).
    with outputs.staged(out_uri, overwrite=True, commit_last=artifacts.TRAIN_METRICS) as stage:
        save_model(stage / artifacts.MODEL_FILE)
        (stage / artifacts.MODEL_CONFIG).write_text(config.to_yaml())
        pd.DataFrame(history).to_csv(stage / artifacts.TRAIN_HISTORY, index=False)
        if tensorboard_dir is not None and tensorboard_dir.exists():
            shutil.copytree(tensorboard_dir, stage / artifacts.TENSORBOARD_DIR)
        (stage / artifacts.TRAIN_METRICS).write_text(json.dumps(metrics, indent=1))
