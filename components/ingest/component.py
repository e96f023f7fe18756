"""KFP component of the ingest step: one sample folder -> a Dataset (shards + manifest) and its QC page."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Output

from histoxai.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(
    samples_uri: str,
    sample: str,
    patch_size: int,
    erosion: int,
    encoding: str,
    shard_size: int,
    data: Output[Dataset],
    qc: Output[Markdown],
):
    """Cut sample `sample` (the folder SAMPLES_URI/<sample>, local or gs://) into patches (parameters
    and their defaults: components/ingest/params.py; the pipeline passes every one).

    data: the ingest output folder (shards/, manifest.parquet, qc.md, qc_thumbnail.png, ingest.json);
    qc: the sample's QC page (rules, drop counts, value ranges). A sample that ingestion refuses does
    not fail the run over the others: data then holds rejected.json (the sample and why), the split
    step leaves it out and the report lists it.
    """
    import json

    from histoxai import artifacts, storage
    from histoxai.artifacts import location
    from histoxai.components.ingest.ingest import ingest_sample
    from histoxai.errors import InputError

    out = location(data)
    try:
        counts = ingest_sample(storage.join(samples_uri, str(sample)), out, sample_id=str(sample),
                               patch_size=patch_size, erosion=erosion, encoding=encoding,
                               shard_size=shard_size, overwrite=True)  # a retry replaces its own output
    except InputError as err:
        print(f"sample {sample} rejected: {err}", flush=True)
        storage.write_text(storage.join(out, artifacts.INGEST_REJECTED),
                           json.dumps({"sample": str(sample), "reason": str(err)}, indent=1) + "\n")
        storage.write_text(location(qc), f"# Sample {sample}: rejected by ingestion\n\n{err}\n")
        data.metadata.update({"sample": str(sample), "rejected": str(err)})
        qc.metadata["sample"] = str(sample)
        return
    data.metadata.update({
        "sample": counts["sample"], "patches": counts["kept"], "voxels": counts["voxels"],
        "patch_size": counts["patch_size"], "encoding": counts["encoding"], "shards": counts["shards"],
        "source": counts["sample_dir"], "manifest": artifacts.MANIFEST,
    })
    storage.write_text(location(qc), storage.read_text(storage.join(out, artifacts.QC_REPORT)))
    qc.metadata["sample"] = counts["sample"]
