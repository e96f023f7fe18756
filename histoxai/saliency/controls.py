"""Controls a saliency map must beat to earn trust: the input alone (darkness, edges), random maps and models.

A method's map earns trust for a target only when, on every measure, it does better than each control
scored the same way on the same patches:
- random: a map of independent random values (mask measures: the mask's area share; deletion and
  insertion: a random pixel order);
- darkness: 255 - mean RGB of the patch (no model at all; nuclei are the darkest pixels of H&E);
- edges: the Sobel gradient magnitude of the grey patch (no model at all);
- randomised model: the same method on the model whose weights are all re-initialised (the last stage
  of the randomisation cascade, see `randomization`).
Measures and which way is better: mask_mass and mask_rank_accuracy higher, deletion_auc lower,
insertion_auc higher. A method beats a control on a measure when its value is strictly better, or when
both sit at the measure's best possible value (mask mass and rank accuracy 1: a map equal to the mask
cannot be beaten there). A measure the method leaves undefined (NaN) is not beaten; a control's
undefined value is not evidence against the method and is skipped. The verdict also names a randomisation
check that does not pass ("fails" or "undefined").
"""

from __future__ import annotations

import numpy as np

CONTROLS = {"random": "random", "darkness": "darkness", "edges": "edges", "randomized": "randomised model"}
INPUT_CONTROLS = ("darkness", "edges")
MEASURES = {"mask_mass": 1, "mask_rank_accuracy": 1, "deletion_auc": -1, "insertion_auc": 1}  # 1: higher wins
BEST = {"mask_mass": 1.0, "mask_rank_accuracy": 1.0}  # the best possible values of bounded measures
TRUSTED = "beats every control"


def darkness(images: np.ndarray) -> np.ndarray:
    """(B, H, W) 255 - mean RGB of (B, H, W, 3) images in 0-255."""
    return 255.0 - np.asarray(images, np.float64).mean(axis=-1)


def edges(images: np.ndarray) -> np.ndarray:
    """(B, H, W) Sobel gradient magnitude of the grey (mean RGB) images."""
    from scipy.ndimage import sobel

    grey = np.asarray(images, np.float64).mean(axis=-1)
    return np.stack([np.hypot(sobel(g, axis=0, mode="reflect"), sobel(g, axis=1, mode="reflect"))
                     for g in grey])


def input_maps(images: np.ndarray) -> dict[str, np.ndarray]:
    """The input-only control maps of a batch of images, by control name."""
    return {"darkness": darkness(images), "edges": edges(images)}


def mask_means(maps: np.ndarray, masks: list) -> tuple[float, float, float]:
    """Mean mask mass, rank accuracy and area share over the patches that have a mask (None: none)."""
    from histoxai.saliency.trust import mask_measures

    values = np.array([mask_measures(m, k) for m, k in zip(maps, masks, strict=True) if k is not None])
    if not len(values):
        return np.nan, np.nan, np.nan
    return tuple(float(np.nanmean(v)) if np.isfinite(v).any() else np.nan for v in values.T)


def mask_row(maps: np.ndarray, control_maps: dict[str, np.ndarray], masks: list) -> dict[str, float]:
    """The mask measures of a method's maps (B, H, W) and of each control's maps on the same patches
    ('<control>_mask_mass', ...), with the random map's values (the mask's area share)."""
    mass, rank, area = mask_means(maps, masks)
    row = {"mask_mass": mass, "mask_rank_accuracy": rank, "mask_area": area, "random_mask_mass": area,
           "random_mask_rank_accuracy": area}
    for name, values in control_maps.items():
        row[f"{name}_mask_mass"], row[f"{name}_mask_rank_accuracy"], _ = mask_means(values, masks)
    return row


def beaten(value: float, control: float, sense: int, best: float | None = None) -> bool | None:
    """Whether the method's value beats the control's: strictly better, or both at the measure's best
    possible value (nothing can do better there); None when the control is undefined."""
    if not np.isfinite(control):
        return None
    if not np.isfinite(value):
        return False
    if best is not None and np.isclose(value, best, rtol=0, atol=1e-9) and np.isclose(control, best, rtol=0,
                                                                                          atol=1e-9):
        return True
    return bool((value - control) * sense > 0)


def not_beaten(row) -> list[str]:
    """Names of the controls the method does not beat on some measure, for one trust table row (a
    mapping with the method's measures and '<control>_<measure>' columns)."""
    missing = []
    for control, label in CONTROLS.items():
        for measure, sense in MEASURES.items():
            column = f"{control}_{measure}"
            if measure in row and column in row and beaten(row[measure], row[column], sense,
                                                           BEST.get(measure)) is False:
                missing.append(label)
                break
    return missing


def verdict(row) -> str:
    """'beats every control', or 'does not beat: darkness, edges' (naming them), with a randomisation
    check that does not pass named after them."""
    missing = not_beaten(row)
    check = row.get("randomization", "passes") if hasattr(row, "get") else "passes"
    parts = [f"does not beat: {', '.join(missing)}"] if missing else []
    if isinstance(check, str) and check != "passes":
        parts.append(f"randomisation check {check}")
    return "; ".join(parts) if parts else TRUSTED
