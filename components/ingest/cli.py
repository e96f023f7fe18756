"""Cut one sample into voxel-aligned H&E patches with MD/FA/FAIP/CC targets, as image shards and a manifest.

The sample folder (local or gs://) is in the dataset layout: coreg_fine/ver1/MR.mat (struct MR: MD,
FA, optional FAIP, ROI), coreg_fine/ver1/HE.mat (HE, uint8 H x W x 3), coreg_fine/ver1/HE_mask.mat
(HE_mask, dHE_mask) and cell_density/QuPath/measurements.tsv (Centroid_X_px, Centroid_Y_px).

One patch per MR voxel (block = floor(slide size / grid size) px per axis), kept only if MR.ROI is 1,
the voxels EROSION away up/down/left/right are in the ROI, dHE_mask is 1, every block pixel is in
HE_mask, and MD, FA (and FAIP if present) are not NaN. CC = nuclei centroids in the block,
CD = CC / the sample's max, SA = structure anisotropy of the block's pixels.

Writes OUT/shards/<sample>-NNNNN.tfrecord, OUT/manifest.parquet, OUT/qc.md (+ qc_thumbnail.png) and
OUT/ingest.json; nothing at all if the input is bad.
"""

from __future__ import annotations

import argparse

from histoxai.components.ingest.params import DEFAULTS
from histoxai.shards import ENCODINGS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sample_dir", metavar="SAMPLE_DIR", help="one sample folder, local or gs://")
    parser.add_argument("--out", required=True, help="output folder, local or gs://")
    parser.add_argument("--sample-id", default=None, help="sample id (default: the folder name)")
    parser.add_argument("--patch-size", type=int, default=DEFAULTS.patch_size,
                        help="side S of the S x S patches (default %(default)s)")
    parser.add_argument("--erosion", type=int, default=DEFAULTS.erosion,
                        help="ROI erosion distance in voxels (default %(default)s, i.e. 1 mm at 200 um)")
    parser.add_argument("--encoding", choices=ENCODINGS, default=DEFAULTS.encoding,
                        help="patch image encoding in the shards (default %(default)s)")
    parser.add_argument("--shard-size", type=int, default=DEFAULTS.shard_size,
                        help="patches per shard (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> None:
    from histoxai.components.ingest.ingest import ingest_sample

    counts = ingest_sample(args.sample_dir, args.out, sample_id=args.sample_id, patch_size=args.patch_size,
                           erosion=args.erosion, encoding=args.encoding, shard_size=args.shard_size,
                           overwrite=args.overwrite)
    dropped = ", ".join(f"{rule} {n}" for rule, n in counts["dropped"].items())
    print(f"{counts['sample']}: {counts['kept']} patches of {counts['voxels']} voxels "
          f"in {counts['shards']} shard(s) -> {args.out} (dropped: {dropped})")
