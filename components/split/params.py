"""The split step's parameters: each default lives here once, and `histoxai split`, the KFP component
and the pipeline read it from here."""

import dataclasses

STRATEGIES = ("random", "blocked")


@dataclasses.dataclass(frozen=True)
class SplitParams:
    train_samples: tuple[str, ...] = ("3", "4")  # the thesis's training samples
    strategy: str = "random"  # one of STRATEGIES
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train, val, test
    seed: int = 0
    block_size: int = 8  # blocked: block side in MR voxels
    guard: int = 1  # blocked: guard band in voxels


DEFAULTS = SplitParams()
