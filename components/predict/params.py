"""The predict step's parameters: each default lives here once, and `histoxai predict`, the KFP
components and the pipelines read it from here."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class PredictParams:
    voxel_um: float = 200.0  # the side of one predicted voxel in µm (the study's MR voxel)
    mpp: float = 0.0  # µm per pixel when the slide's metadata has none; 0: from the slide
    batch_size: int = 64  # patches per prediction batch


DEFAULTS = PredictParams()
