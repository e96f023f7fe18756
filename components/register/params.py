"""The register step's parameters (the model registry and the promotion rule): each default lives here
once, and `histoxai register`, `histoxai models`, the KFP components and the pipeline read it from here."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class RegisterParams:
    model_registry: str = ""  # "" = register nothing; a folder (local or gs://) or vertex://PROJECT/REGION
    multitask_model_name: str = "histoxai-multitask"  # one registered model per model kind
    single_task_model_name: str = "histoxai-single-task"
    # The promotion rule (histoxai.model_registry.gate): the mean over targets of each target's mean
    # metric over the held-out samples (the test set when none is held out) must beat the champion's
    # by promotion_margin, and no target may fall by more than promotion_tolerance.
    promotion_metric: str = "r2"  # r2 (standard, 1 - SSE/SST) or pearson_r2
    promotion_margin: float = 0.01
    promotion_tolerance: float = 0.02


DEFAULTS = RegisterParams()
