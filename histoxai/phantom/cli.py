"""Render the digital phantom: H&E-like histology for real samples' maps, in the dataset's layout.

For each chosen sample of summary.mat (the real MD/FA/ROI, cell density and structure tensor maps
of Brabec et al. 2023) this draws pink stroma, white gaps and purple nuclei, one block of P x P
pixels per MR voxel: the nuclei count follows the cell density, their orientation the histology
structure tensor and their coherence and elongation the structure anisotropy. It writes OUT/<n>/
like the real dataset (coreg_fine/ver1/{MR,HE,HE_mask}.mat, cell_density/QuPath/measurements.tsv)
and the truth (phantom_truth/: every nucleus's mask, a nucleus table, how the targets were made).

Examples:
  histoxai phantom --out data/phantom --samples 3,4 --pixels-per-voxel 64
  histoxai phantom --out gs://bucket/phantom --samples 3 --pixels-per-voxel 360 --crop 80x80
  histoxai phantom --out /tmp/ph --samples 7 --targets derived --mat-format v5
  histoxai phantom --out /tmp/ph --samples 3 --mat-layout matlab   # gzip, MATLAB-like chunks
"""

from __future__ import annotations

import argparse

from histoxai.matlayout import DEFAULT_PHANTOM_LAYOUT, PHANTOM_LAYOUTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (local or gs://); samples go to OUT/<n>/")
    parser.add_argument("--samples", default="3,4", help="sample numbers 1-16, comma-separated (default 3,4)")
    parser.add_argument("--summary", default=None,
                        help="summary.mat to read the maps from (default: the copy bundled with histoxai)")
    parser.add_argument("--pixels-per-voxel", type=int, default=64, metavar="P",
                        help="image pixels per MR voxel edge, at least 8: ~360 is the real scale, "
                             "32-96 a fast demo (default 64)")
    parser.add_argument("--n-max", type=int, default=None,
                        help="nuclei in a voxel with cell density 1 (default: about 28%% nuclear cover at P, "
                             "at most 250)")
    parser.add_argument("--targets", choices=("real", "derived"), default="real",
                        help="real: the sample's MD/FA maps; derived: MD and FA made from the rendered "
                             "nuclei by a known formula (written to phantom_truth/targets.json)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--crop", default=None, metavar="ROWSxCOLS",
                        help="render only the top-left ROWSxCOLS voxels of the MR grid, e.g. 80x80 "
                             "(clamped to the grid)")
    parser.add_argument("--mat-format", choices=("v7.3", "v5"), default="v7.3",
                        help="MAT-file version of MR/HE/HE_mask (v5 only for images under 2 GB)")
    parser.add_argument("--mat-layout", choices=PHANTOM_LAYOUTS, default=DEFAULT_PHANTOM_LAYOUT,
                        help="how v7.3 HE.mat and HE_mask.mat store their images: rows = uncompressed chunks "
                             "one voxel row tall (suits ingestion); matlab = as MATLAB's save -v7.3 does, "
                             "deflate level 3 with small automatic chunks (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="render N samples at once, one process each (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing sample folders")


def run(args: argparse.Namespace) -> None:
    from histoxai.phantom.writer import render_phantom

    uris = render_phantom(
        args.out, args.samples, pixels_per_voxel=args.pixels_per_voxel, n_max=args.n_max,
        targets=args.targets, seed=args.seed, crop=args.crop, mat_format=args.mat_format,
        mat_layout=args.mat_layout, summary=args.summary, overwrite=args.overwrite,
        workers=args.workers)
    for uri in uris:
        print(uri)
