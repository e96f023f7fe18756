"""Saliency maps for a trained model over the test set (and chosen samples): stored raw, with trust measures.

Computes every target x method x setting x score for each selected patch: Grad-CAM++ and LayerCAM
(CAM layer: the layer the head pools, e.g. EfficientNetV2S's top_activation; scores that cannot
overflow), SmoothGrad (seeded, sigma relative to each image's range), vanilla gradient and
Integrated Gradients. Writes to OUT: maps.parquet (one row per map: sample, row, col, y, ŷ, Δ, rΔ,
map statistics, where the map is stored) and maps/ (raw float16 maps, read them with
histoxai.saliency.store.open_maps), explain.json, and the trust report trust.md / trust.html
(NaN and blank shares, deletion/insertion AUCs, model-randomisation check; with --phantom-dir, relevance
inside the phantom's true nuclei masks for CC). Maps with NaN values are counted, flagged and reported.

Methods are METHOD[:KEY=VALUE,...]: gradcam++[:layer=NAME], layercam[:layers=A+B,gamma=2]
(several layers fused by element-wise maximum), smoothgrad[:sigma=0.2,n=30,seed=0], vanilla,
ig[:steps=32,baseline=white|black|VALUE]. Scores: increase (default), decrease, toward=VALUE,
toward=truth (each patch's measured value).

Examples:
  histoxai explain --model out/models/CC --data out/split --out out/explain/CC --phantom-dir out/phantom
  histoxai explain --model gs://b/models/mdfa --data gs://b/split --out gs://b/explain/mdfa-0 \\
      --samples 1,2 --shard-range 0:4 --methods gradcam++ smoothgrad:sigma=0.3,n=30 --scores increase,decrease
"""

from __future__ import annotations

import argparse

from histoxai.components.explain.methods import split_methods
from histoxai.components.explain.params import DEFAULTS, ENGINES


def _list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _joined(values) -> str:
    return ",".join(values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="`histoxai train` output folder or a .keras file, local or gs://")
    parser.add_argument("--data", required=True,
                        help="split manifest (split.parquet or its folder), local or gs://")
    parser.add_argument("--out", required=True, help="output folder, local or gs://")
    parser.add_argument("--methods", type=split_methods, default=_joined(DEFAULTS.methods), metavar="METHODS",
                        help="comma-separated methods with their settings, e.g. "
                             "gradcam++,smoothgrad:sigma=0.2,n=30,vanilla (default: %(default)s)")
    parser.add_argument("--targets", type=_list, default=_joined(DEFAULTS.targets),
                        help="comma-separated model outputs (default: all)")
    parser.add_argument("--scores", type=_list, default=_joined(DEFAULTS.scores),
                        help="comma-separated score modes (default: %(default)s)")
    parser.add_argument("--splits", type=_list, default=_joined(DEFAULTS.splits),
                        help="comma-separated splits to explain (default: %(default)s; '' for none)")
    parser.add_argument("--samples", type=_list, default=_joined(DEFAULTS.samples),
                        help="comma-separated samples to explain whole")
    parser.add_argument("--max-patches", type=int, default=DEFAULTS.max_patches, metavar="N",
                        help="at most N patches, a seeded random choice (default 0: every patch)")
    parser.add_argument("--shard-range", metavar="A:B", help="only shards A to B-1 of the selection "
                                                             "(in reading order), to fan out over shards")
    parser.add_argument("--phantom-dir", help="the samples' folder (one sub-folder per sample, with "
                                              "phantom_truth/ or QuPath detections): scores maps against "
                                              "the nuclei")
    parser.add_argument("--nuclei", action="store_true",
                        help="also answer what drives the prediction: relevance per nucleus and its "
                             "properties, concept sensitivity, and (phantom samples) interventions; needs "
                             "--phantom-dir; writes drivers.md and its tables beside the maps")
    parser.add_argument("--nuclei-voxels", type=int, default=DEFAULTS.nuclei_voxels,
                        help="phantom voxels re-rendered per property value (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                        help="patches per batch (default %(default)s)")
    parser.add_argument("--gradient-batch", type=int, default=DEFAULTS.gradient_batch,
                        help="most images per gradient pass for SmoothGrad copies and IG steps "
                             "(default %(default)s)")
    parser.add_argument("--map-size", type=int,
                        help="store maps downsampled to this size (default: the model's input size)")
    parser.add_argument("--engine", default=DEFAULTS.engine, choices=ENGINES,
                        help="batched compiled graphs (default) or tf-keras-vis's own classes")
    parser.add_argument("--trust-patches", type=int, default=DEFAULTS.trust_patches,
                        help="patches for deletion/insertion and randomisation "
                             "(default %(default)s; 0 skips trust)")
    parser.add_argument("--trust-steps", type=int, default=DEFAULTS.trust_steps,
                        help="deletion/insertion steps (default %(default)s)")
    parser.add_argument("--randomize-blocks", type=int, default=DEFAULTS.randomize_blocks,
                        help="at most N measured stages of the randomisation cascade between the head "
                             "and the input; every block is randomised either way (0: measure after "
                             "every block; default %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed,
                        help="patch choice and randomisation seed (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def run(args: argparse.Namespace) -> None:
    from histoxai import artifacts
    from histoxai.components.explain.explain import explain, parse_shard_range
    from histoxai.console import import_tensorflow
    from histoxai.errors import InputError

    if args.max_patches < 0:
        raise InputError(f"--max-patches {args.max_patches}: expected an integer >= 0 (0: every patch)")
    artifacts.model_file(args.model)  # wrong paths fail here, before TensorFlow loads
    artifacts.split_table(args.data)
    import_tensorflow()
    summary = explain(
        args.model, args.data, args.out, methods=args.methods, targets=args.targets or None,
        scores=args.scores, splits=args.splits, samples=args.samples, max_patches=args.max_patches or None,
        shard_range=parse_shard_range(args.shard_range), batch_size=args.batch_size,
        gradient_batch=args.gradient_batch, map_size=args.map_size, engine=args.engine,
        phantom_dir=args.phantom_dir, trust_patches=args.trust_patches, trust_steps=args.trust_steps,
        randomize_blocks=args.randomize_blocks, seed=args.seed, nuclei=args.nuclei,
        nuclei_voxels=args.nuclei_voxels, overwrite=args.overwrite)
    print(f"{summary['maps']} maps for {summary['patches']} patches in {summary['wall_s']:.1f} s; maps/s: "
          + ", ".join(f"{k} {v:g}" for k, v in summary["maps_per_s"].items()))
    if summary["nan_maps"]:
        print(f"WARNING: {summary['nan_maps']} maps hold NaN or infinite values (flagged in maps.parquet): "
              + ", ".join(f"{k} {v}" for k, v in summary["nan_maps_by_method"].items()))
    if summary.get("trust", {}).get("flagged"):
        print("randomisation check flagged (maps barely change with random weights): "
              + "; ".join(summary["trust"]["flagged"]))
    for row in summary.get("drivers", {}).get("agreement", []):
        print(f"what drives {row['target']}: per-nucleus relevance {row['saliency'] or '-'}, concepts "
              f"{row['concepts'] or '-'}, interventions {row['interventions'] or '-'}: {row['verdict']}")
    print(f"wrote {args.out}")
