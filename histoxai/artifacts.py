"""The artifact contract: every file one step writes and another step (or the app) reads, named once.

Each step's output is a folder (local or gs://). The names below are what lies in it; the readers
give one clear error naming the file and the step that writes it. `location(artifact)` decides how a
KFP component body addresses an artifact: on Vertex AI the artifact's URI is gs:// and the step reads
and writes it through the GCS client (histoxai.storage publishes outputs whole); under kfp.local and
open-source KFP the step uses the local path (KFP's launcher syncs it with MinIO or S3).
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from histoxai import __version__, storage
from histoxai.errors import InputError

# ingest: one sample -> shards + manifest
SHARDS_DIR = "shards"
MANIFEST = "manifest.parquet"  # one row per patch (histoxai.manifest)
INGEST_INFO = "ingest.json"  # counts per rule, MR grid, patch size, timing
INGEST_REJECTED = "rejected.json"  # in place of the above: the sample and why ingestion refused it
QC_REPORT, QC_THUMBNAIL = "qc.md", "qc_thumbnail.png"
# split: pooled manifests -> train/val/test/heldout
SPLIT_TABLE, SPLIT_INFO, SPLIT_REPORT = "split.parquet", "split.json", "split.md"
# train: a model folder
MODEL_FILE, MODEL_CONFIG = "model.keras", "config.yaml"
TRAIN_HISTORY, TRAIN_METRICS, TENSORBOARD_DIR = "history.csv", "metrics.json", "tensorboard"
MODEL_FILES = (MODEL_FILE, MODEL_CONFIG, TRAIN_METRICS)  # what a finished training leaves for others
# tune: the study
BEST_CONFIG, TUNE_SUMMARY, STUDY_JOURNAL = "best_config.yaml", "summary.md", "study.journal"
BEST_MODEL, BEST_TRIAL = "best_model", "trial.json"  # the best trial's training output (histoxai/reuse.py)
VIZIER_JOB = "vizier_job.json"  # tune --backend vizier: the Vertex AI job request
# evaluate: Table 4.1, maps, baselines
EVALUATION_TABLE, EVALUATION_INFO = "evaluation.parquet", "evaluation.json"
BASELINE_TABLE, BASELINE_REPORT, BASELINE_INFO = "baseline.parquet", "baseline.md", "baseline.json"
# explain: saliency maps and their trust measures
MAPS_TABLE, EXPLAIN_INFO = "maps.parquet", "explain.json"
TRUST_TABLE, TRUST_CURVES = "trust.parquet", "trust_curves.parquet"
TRUST_REPORT, TRUST_HTML = "trust.md", "trust.html"
TRUST_CASCADE, TRUST_CASCADE_PLOT = "trust_cascade.parquet", "trust_cascade.png"  # randomisation stages
# explain --nuclei: what drives the prediction (histoxai.saliency.nuclei, concepts; phantom interventions)
NUCLEI_TABLE, NUCLEI_DRIVERS = "nuclei.parquet", "nuclei_drivers.parquet"  # per nucleus x map; per property
CONCEPTS_TABLE = "concepts.parquet"  # concept sensitivity per target x concept x layer
RESPONSE_CURVES, RESPONSE_SUMMARY = "response_curves.parquet", "response_summary.parquet"  # interventions
RESPONSE_PLOT, DRIVERS_PLOT = "response_curves.png", "nuclei_drivers.png"
DRIVERS_REPORT = "drivers.md"  # the three answers and whether they agree
# the champion (histoxai.model_registry) beside a run's model, and how the two compared in evaluate
CHAMPION_INFO = "champion.json"  # registry, name, version of a fetched champion; version null: none
COMPARISON, COMPARISON_MARKDOWN = "comparison.json", "comparison.md"
REGISTRATION = "registration.json"  # register: the version, verdict, scores and registry
# evaluate and report: the step's page
REPORT_MARKDOWN, REPORT_HTML, RUN_SUMMARY = "report.md", "report.html", "summary.json"

# The file that marks a folder as a step's output (the review app finds a run's outputs by these).
MARKERS = {"explain": MAPS_TABLE, "evaluate": EVALUATION_TABLE, "split": SPLIT_TABLE,
           "ingest": MANIFEST, "models": MODEL_FILE}
WRITERS = {INGEST_INFO: "histoxai ingest", INGEST_REJECTED: "the pipeline's ingest step",
           SPLIT_INFO: "histoxai split", TRAIN_METRICS: "histoxai train", EXPLAIN_INFO: "histoxai explain",
           EVALUATION_INFO: "histoxai evaluate", CHAMPION_INFO: "histoxai models fetch",
           REGISTRATION: "histoxai register"}


def split_table(data: str, option: str = "--data") -> str:
    """The split table a --data value names (split.parquet, or a split folder holding it), checked to
    exist, so a command fails on a wrong path before it loads TensorFlow."""
    uri = str(data) if str(data).endswith(".parquet") else storage.join(data, SPLIT_TABLE)
    if not storage.exists(uri):
        raise InputError(f"{option} {data}: no {SPLIT_TABLE} there; expected a split folder or its "
                         f"{SPLIT_TABLE} (`histoxai split`)")
    return uri


def model_file(model: str, option: str = "--model") -> str:
    """The model.keras a --model value names (the file, or a training output folder), checked to exist."""
    uri = str(model) if str(model).endswith(".keras") else storage.join(model, MODEL_FILE)
    if not storage.exists(uri):
        raise InputError(f"{option} {model}: no {MODEL_FILE} there; expected a training output folder "
                         f"(`histoxai train`) or a .keras file")
    return uri


def read_json(folder: str, name: str) -> dict[str, Any]:
    """The JSON object `name` in a step's output folder; InputError when missing or malformed."""
    uri = storage.join(folder, name)
    writer = WRITERS.get(name, "the step that writes it")
    if not storage.exists(uri):
        raise InputError(f"{uri}: no such file; expected the {name} that `{writer}` writes")
    try:
        value = json.loads(storage.read_text(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{uri}: not valid JSON ({err}); expected the {name} that `{writer}` writes") \
            from None
    if not isinstance(value, dict):
        raise InputError(f"{uri}: expected a JSON object (the {name} that `{writer}` writes)")
    return value


def read_ingest_info(folder: str) -> dict[str, Any]:
    return read_json(folder, INGEST_INFO)


def read_rejection(folder: str) -> dict[str, Any] | None:
    """{sample, reason} when the pipeline's ingest step refused this folder's sample, else None."""
    if not storage.exists(storage.join(folder, INGEST_REJECTED)):
        return None
    return read_json(folder, INGEST_REJECTED)


def read_split_info(folder: str) -> dict[str, Any]:
    return read_json(folder, SPLIT_INFO)


def read_train_metrics(model_dir: str) -> dict[str, Any]:
    return read_json(model_dir, TRAIN_METRICS)


def read_explain_info(folder: str) -> dict[str, Any]:
    return read_json(folder, EXPLAIN_INFO)


def read_model_config(model_dir: str) -> dict[str, Any]:
    """A model folder's config.yaml as a plain mapping (histoxai.config.load_config validates it)."""
    import yaml

    uri = storage.join(model_dir, MODEL_CONFIG)
    try:
        values = yaml.safe_load(storage.read_text(uri)) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"{uri}: not valid UTF-8 YAML ({err}); expected a training config") from None
    if not isinstance(values, dict):
        raise InputError(f"{uri}: expected a mapping of hyperparameters (a training config)")
    return values


# --- KFP component bodies ----------------------------------------------------------------------------
CODE_VERSION_ENV = "HISTOXAI_CODE_VERSION"  # set on every task at compile time (pipelines/pipeline.py)


def location(artifact) -> str:
    """The artifact's gs:// URI when it has one, else its local path."""
    uri = str(artifact.uri or "")
    return uri if storage.is_gcs(uri) else artifact.path


def _source_checkout() -> str | None:
    """The source folder of the editable install this code runs from (pip records it in
    direct_url.json), else None: an installed wheel's version is its code version."""
    from importlib import metadata
    from pathlib import Path

    here = Path(__file__).resolve()
    for dist in metadata.distributions(name="histoxai"):
        try:
            record = json.loads(dist.read_text("direct_url.json") or "{}")
        except json.JSONDecodeError:
            continue
        url = str(record.get("url", ""))
        if record.get("dir_info", {}).get("editable") and url.startswith("file://"):
            checkout = Path(url.removeprefix("file://")).resolve()
            if here.is_relative_to(checkout):
                return str(checkout)
    return None


def code_version() -> str:
    """Package version plus the git commit of an editable checkout: '0.1.0+g1a2b3c4d5e6f[.dirty]'."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    checkout = _source_checkout()
    if checkout is None:
        return __version__  # an installed wheel: its version is the code version
    try:
        commit = subprocess.run(["git", "-C", checkout, "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", checkout, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
