"""The train step's parameters beyond the training config (histoxai.config.TrainConfig holds those):
the two models a pipeline run trains, read by the pipeline and `histoxai train`'s help."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainParams:
    multitask_targets: str = "MD,FA"  # the multi-task model: one head per target
    single_task_targets: str = "CC"  # the single-task model


DEFAULTS = TrainParams()
