"""The ingest step's parameters: each default lives here once, and `histoxai ingest`, the KFP
component and the pipeline read it from here."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class IngestParams:
    patch_size: int = 360  # side S of the S x S patches in pixels (the model's input follows it)
    erosion: int = 5  # ROI erosion in voxels (1 mm at 200 um)
    encoding: str = "zlib"  # one of histoxai.shards.ENCODINGS (its docstring compares them)
    shard_size: int = 1000  # patches per shard


DEFAULTS = IngestParams()
