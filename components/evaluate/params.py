"""The evaluate step's parameters: each default lives here once, and `histoxai evaluate`, `histoxai
baseline`, the KFP component and the pipeline read it from here."""

import dataclasses

BUNDLED = "bundled"  # the study's summary.mat shipped with histoxai
ROI_CHOICES = ("sROI", "ROI", "sROI_full", "sROI_alternative")  # "ROI" is sMR{n}.ROI, the MR mask


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    baseline_summary: str = BUNDLED  # BUNDLED, "" (no baselines), or a summary.mat path / gs:// URI
    baseline_repeats: int = 100  # random 80/20 splits per baseline regression
    baseline_roi: str = "sROI"  # the ROI the study scored on
    seed: int = 0  # seed of the baselines' splits
    batch_size: int = 64  # patches per prediction batch


DEFAULTS = EvaluateParams()
