"""The tune step's parameters: each default lives here once, and `histoxai tune`, the KFP component
and the pipeline read it from here."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class TuneParams:
    search_space: str = "search_space"  # a shipped name (histoxai/configs/), a YAML file or gs://
    targets: str = "MD,FA"  # the model the pipeline tunes
    objective_targets: str = ""  # "": every trained target
    tuning_trials: int = 20  # finished trials the study should hold (0: no limit, give a timeout)
    timeout_s: float = 0.0  # 0: no limit
    startup_trials: int = 5  # random, never-pruned trials before TPE and pruning start
    warmup_epochs: int = 3  # a trial may be pruned from the end of this epoch on


DEFAULTS = TuneParams()
