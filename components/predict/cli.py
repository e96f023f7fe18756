"""Predict MRI-like maps (MD, FA, CC: the model's targets) from histology slides alone.

SLIDE is a whole-slide image that OpenSlide reads (.svs, .ndpi, .mrxs, .scn, .bif, tiled pyramidal
.tif) or a sample folder of the dataset layout (coreg_fine/ver1/HE.mat; with MR.mat the predictions
lie on its grid, voxel by voxel with the measured maps; with HE_mask.mat that mask decides which
voxels are tissue). Elsewhere voxels are --voxel-um wide at the slide's µm per pixel (its metadata,
else --mpp) and a detector (Otsu on saturation) finds the tissue. gs:// slides are downloaded to a
temporary folder first (OpenSlide reads local files only).

--model is a training output folder (model.keras, config.yaml) or registry:NAME@champion /
registry:NAME@3 with --registry LOCATION. Writes OUT/<slide id>/: <T>.npz, <T>.png, <T>.tif (the map
in the slide's geometry), predictions.parquet, tissue.png, summary.md, summary.html, prediction.json.

Examples:
  histoxai predict slides/case7.svs --model outputs/models/mdfa --out outputs/predict
  histoxai predict outputs/phantom/6 --model registry:histoxai-multitask@champion \\
      --registry gs://b/registry --out gs://b/predict/6 --overwrite
"""

from __future__ import annotations

import argparse

from histoxai.components.predict.params import DEFAULTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slides", nargs="+", metavar="SLIDE",
                        help="whole-slide image file or sample folder, local or gs://; several allowed")
    parser.add_argument("--model", required=True, metavar="DIR_OR_REFERENCE",
                        help="training output folder, or registry:NAME@VERSION|ALIAS with --registry")
    parser.add_argument("--registry", default="", metavar="LOCATION",
                        help="the model registry for registry: references (folder, gs:// or "
                             "vertex://PROJECT/REGION)")
    parser.add_argument("--out", required=True, help="output folder, local or gs://")
    parser.add_argument("--voxel-um", type=float, default=DEFAULTS.voxel_um,
                        help="voxel side in µm where the slide has no MR grid (default: %(default)s)")
    parser.add_argument("--mpp", type=float, default=DEFAULTS.mpp,
                        help="µm per pixel for slides whose metadata has none (HE.mat never has it)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                        help="patches per prediction batch (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def run(args: argparse.Namespace) -> None:
    from histoxai.components.predict.slides import predict_slides
    from histoxai.console import import_tensorflow

    import_tensorflow()
    info = predict_slides(args.slides, args.model, args.out, voxel_um=args.voxel_um, mpp=args.mpp,
                          batch_size=args.batch_size, overwrite=args.overwrite, registry=args.registry)
    for entry in info["slides"]:
        print(f"{entry['id']}: {entry['predicted']} of {entry['voxels']} voxels predicted "
              f"({entry['patches_per_s']} patches/s)")
    print(f"wrote {args.out} (per slide: maps .npz/.png/.tif, predictions.parquet, summary.md/.html)")
