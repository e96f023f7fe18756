"""KFP component of the split step: the ingested samples -> one split Dataset and its table of counts."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from histoxai.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def split(
    manifests: Input[list[Dataset]],
    train_samples: list[str],
    strategy: str,
    fractions: list[float],
    seed: int,
    block_size: int,
    guard: int,
    data: Output[Dataset],
    table: Output[Markdown],
):
    """Pool `train_samples` into train/val/test (random or spatially blocked); other samples are heldout
    (parameters and their defaults: components/split/params.py; the pipeline passes every one).

    data: the split folder (split.parquet, split.json, split.md); table: split.md, counts per sample and set.
    """
    import json

    from histoxai import artifacts, storage
    from histoxai.artifacts import location
    from histoxai.components.split.split import split_manifests
    from histoxai.errors import InputError

    out = location(data)
    # dsl.Collected and JSON list parameters can turn whole numbers into floats; sample ids are strings
    ids = [str(int(s)) if isinstance(s, float) and s.is_integer() else str(s) for s in train_samples]
    # samples the ingest step refused are left out (the report lists them); the rest still train
    rejections = {uri: artifacts.read_rejection(uri) for uri in (location(m) for m in manifests)}
    refused = {r["sample"]: r["reason"] for r in rejections.values() if r is not None}
    inputs = [uri for uri, rejection in rejections.items() if rejection is None]
    if refused and not [s for s in ids if s not in refused]:
        raise InputError(f"train_samples {', '.join(ids)}: every training sample was refused by ingestion "
                         f"({'; '.join(f'{s}: {why}' for s, why in refused.items())})")
    ids = [s for s in ids if s not in refused]
    split_manifests(inputs, out, train_samples=ids, strategy=strategy,
                    fractions=fractions, seed=int(seed), block_size=int(block_size), guard=int(guard),
                    overwrite=True)
    info = json.loads(storage.read_text(storage.join(out, artifacts.SPLIT_INFO)))
    totals = {name: sum(row[name] for row in info["counts"].values())
              for name in next(iter(info["counts"].values()))}
    data.metadata.update({"strategy": strategy, "train_samples": info["options"]["train_samples"],
                          "rejected": refused,
                          "samples": sorted(info["counts"]), "patches": totals,
                          "table": artifacts.SPLIT_TABLE})
    storage.write_text(location(table), storage.read_text(storage.join(out, artifacts.SPLIT_REPORT)))
