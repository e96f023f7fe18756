"""Voxel blocks to model patches: the one resize that ingestion and prediction share.

Ingestion stores each voxel's slide block resized to the run's patch size, and prediction feeds a
model blocks cut from a slide; both go through `resize_block`, so the same block becomes the same
pixels whichever path it takes.
"""

from __future__ import annotations

import numpy as np


def resize_block(block: np.ndarray, size: int) -> np.ndarray:
    """One H x W x 3 uint8 block as size x size x 3 uint8 (Pillow bicubic, antialiased when shrinking;
    a block already of that size is returned as it is)."""
    from PIL import Image

    if block.shape[0] == size and block.shape[1] == size:
        return np.ascontiguousarray(block)
    image = Image.fromarray(np.ascontiguousarray(block))
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC))
