"""The explain step's parameters: each default lives here once, and `histoxai explain`, the KFP
component and the pipeline read it from here. Lists are tuples here; "" or () means "all" or "none"
as each field says."""

import dataclasses

from histoxai.components.explain.methods import DEFAULT_METHODS


@dataclasses.dataclass(frozen=True)
class ExplainParams:
    methods: tuple[str, ...] = DEFAULT_METHODS
    targets: tuple[str, ...] = ()  # (): every output of the model
    scores: tuple[str, ...] = ("increase",)
    splits: tuple[str, ...] = ("test",)
    samples: tuple[str, ...] = ()  # samples explained whole, besides the splits
    max_patches: int = 0  # 0: every selected patch
    shard_range: str = ""  # "A:B": shards A to B-1 of the selection; "": all
    phantom_dir: str = ""  # the samples' folder (phantom truth or QuPath detections): maps vs the nuclei
    nuclei: bool = False  # what drives the prediction: per-nucleus relevance, concepts, interventions
    nuclei_voxels: int = 6  # phantom voxels re-rendered per property value for the response curves
    batch_size: int = 16
    gradient_batch: int = 64  # most images per gradient pass (SmoothGrad copies, IG steps)
    engine: str = "batched"
    trust_patches: int = 32  # 0 skips the trust measures
    trust_steps: int = 16
    randomize_blocks: int = 2
    seed: int = 0


DEFAULTS = ExplainParams()
ENGINES = ("batched", "tf-keras-vis")
