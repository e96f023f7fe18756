"""The train step's parameters beyond the training config (histoxai.config.TrainConfig holds those):
the two models a pipeline run trains and the Vertex AI TensorBoard instance its epochs go to, read by
the pipeline and `histoxai train`."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainParams:
    multitask_targets: str = "MD,FA"  # the multi-task model: one head per target
    single_task_targets: str = "CC"  # the single-task model
    # projects/P/locations/L/tensorboards/ID to write each epoch's scalars to; "" writes none
    tensorboard: str = ""


DEFAULTS = TrainParams()
