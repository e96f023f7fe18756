"""The numbers behind concept sensitivity: a layer's pooled activations and output gradients per patch,
regression concept vectors fitted by ridge regression, and their held-out R² and sensitivities.

`layer_gradients` runs the model once over the patches (in batches) through a sub-model that maps the
input to (the layers' activations, the target outputs), as the explain step's engine does. Per layer it
keeps the activation averaged over positions, a (N, K) matrix, and per target the gradient of the
output with respect to the activation map summed over positions, also (N, K). That sum is the
derivative of the output when every position's activation moves by the same vector u, which moves
the spatial mean, the vector the concept is regressed on, by exactly u; for a layer that the head pools
globally it equals the gradient with respect to the pooled vector. So the sensitivity g · v is "how
fast the prediction changes when the patch's mean activation moves along the concept vector v".

`split_statistics` fits, for one train/held-out split, the concept (column 0 of Y) and its random
stand-ins (the other columns) at once, through one SVD of the centred training activations: a ridge
regression per column, its penalty chosen by generalised cross-validation (held-out R², the ridge
direction), and the pattern cov(activations, concept); then the held-out patches' gradients along them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from histoxai.errors import InputError
from histoxai.saliency.precision import float32_model

# penalties tried, relative to the largest squared singular value of the training activations
LAMBDA_GRID = np.logspace(-6, 2, 17)


def _output_layer(model, target: str):
    names = list(getattr(model, "output_names", None) or [])
    if target not in names:
        raise InputError(f"target {target!r}: not an output of model {model.name}; "
                         f"expected one of {names}")
    return model.get_layer(target).output


def _layer_output(model, name: str):
    try:
        output = model.get_layer(name).output
    except ValueError as err:
        raise InputError(f"layer {name!r}: not in model {model.name}; expected a layer name such as "
                         f"{model.layers[-2].name!r} (see model.summary())") from err
    if isinstance(output, list | tuple) or len(output.shape) < 2:
        raise InputError(f"layer {name!r}: its output is not one (batch, ..., channels) tensor; expected a "
                         "convolutional or dense layer")
    return output


def layer_gradients(model, images: np.ndarray, layers: Sequence[str], targets: Sequence[str], *,
                    batch_size: int = 32) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """{layer: (pooled activations (N, K), {target: summed gradients (N, K)})}, float64.

    images: (N, H, W, 3) as the model takes them (0-255 pixels for histoxai models).
    """
    import keras
    import tensorflow as tf

    model = float32_model(model)
    outputs = [_layer_output(model, name) for name in layers] + [_output_layer(model, t) for t in targets]
    view = keras.Model(model.inputs, outputs)
    count = len(layers)

    def pool(tensor, reduce):
        axes = list(range(1, len(tensor.shape) - 1))
        return reduce(tensor, axis=axes) if axes else tensor

    @tf.function(reduce_retracing=True)
    def step(batch):
        with tf.GradientTape(persistent=True) as tape:
            values = view(batch, training=False)
            activations = list(values[:count])
            scores = [tf.reduce_sum(tf.cast(y, tf.float32)) for y in values[count:]]
        grads = [tape.gradient(score, activations) for score in scores]
        del tape
        pooled = [tf.cast(pool(a, tf.reduce_mean), tf.float32) for a in activations]
        summed = [[None if g is None else tf.cast(pool(g, tf.reduce_sum), tf.float32) for g in per_target]
                  for per_target in grads]
        return pooled, summed

    parts_a: list[list[np.ndarray]] = [[] for _ in layers]
    parts_g: list[list[list[np.ndarray]]] = [[[] for _ in layers] for _ in targets]
    for first in range(0, len(images), max(1, int(batch_size))):
        batch = tf.constant(np.asarray(images[first:first + batch_size], np.float32))
        pooled, summed = step(batch)
        for i in range(count):
            parts_a[i].append(pooled[i].numpy())
        for t, per_target in enumerate(summed):
            for i, g in enumerate(per_target):
                if g is None:
                    raise InputError(f"layer {layers[i]!r}: output {targets[t]!r} does not depend on it; "
                                     "expected a layer before the output")
                parts_g[t][i].append(g.numpy())
    return {name: (np.concatenate(parts_a[i]).astype(np.float64),
                   {t: np.concatenate(parts_g[j][i]).astype(np.float64) for j, t in enumerate(targets)})
            for i, name in enumerate(layers)}


class SplitFit:
    """The SVD of one split's centred training activations, reused by every concept on that split."""

    def __init__(self, activations: np.ndarray, train: np.ndarray, test: np.ndarray):
        x = activations[train]
        self.mean = x.mean(axis=0)
        u, s, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        keep = s > s[0] * 1e-10 if s.size and s[0] > 0 else np.zeros(s.shape, bool)
        self.u, self.s, self.vt = u[:, keep], s[keep], vt[keep]
        self.train, self.test = train, test
        self.test_x = (activations[test] - self.mean) @ self.vt.T  # held-out patches in SVD coordinates
        self._gradients: dict[str, np.ndarray] = {}

    def test_gradients(self, target: str, gradients: np.ndarray) -> np.ndarray:
        """The held-out patches' gradients (N, K) of one target in SVD coordinates, computed once."""
        if target not in self._gradients:
            self._gradients[target] = gradients[self.test] @ self.vt.T
        return self._gradients[target]

    def coefficients(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For the m columns of y (n_train, m): ridge coefficients (rank, m) in SVD coordinates, each
        column with its own penalty chosen by generalised cross-validation, and the pattern
        cov(activations, y) (rank, m) in the same coordinates."""
        n = len(y)
        y = y - y.mean(axis=0)
        if not self.s.size:
            return np.zeros((0, y.shape[1])), np.zeros((0, y.shape[1]))
        uy = self.u.T @ y  # (rank, m)
        total = (y**2).sum(axis=0)
        s2 = self.s**2
        best, best_score = np.full(y.shape[1], LAMBDA_GRID[-1] * s2[0]), np.full(y.shape[1], np.inf)
        for lam in LAMBDA_GRID * s2[0]:
            d = s2 / (s2 + lam)
            rss = np.maximum(total - ((2 * d - d**2)[:, None] * uy**2).sum(axis=0), 0.0)
            dof = d.sum() + 1.0  # + the intercept
            if dof >= n:
                continue
            score = rss / (n * (1 - dof / n) ** 2)
            better = score < best_score
            best[better], best_score[better] = lam, score[better]
        return (self.s[:, None] / (s2[:, None] + best[None, :])) * uy, self.s[:, None] * uy / n


def _unit(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.linalg.norm(vectors, axis=0)
    return vectors / np.where(norm > 0, norm, 1.0), norm == 0


def split_statistics(fit: SplitFit, y_train: np.ndarray, y_test: np.ndarray,
                     gradients: dict[str, np.ndarray]) -> dict:
    """For m columns of standardised values at fit.train (y_train) and fit.test (y_test), column 0 the
    concept, each an (m,) array: "r2", the ridge fit's held-out R²; per target a dict of means over
    the held-out patches: "effect" g . p with p = cov(a, concept) (target units per SD of the
    concept), "sensitivity" g . p / |p|, "tcav" the fraction where it is positive, and "rcv" g . w / |w|
    with w the ridge direction. NaN where a vector is zero."""
    c, pattern = fit.coefficients(y_train)
    predicted = fit.test_x @ c + y_train.mean(axis=0)
    sst = ((y_test - y_test.mean(axis=0)) ** 2).sum(axis=0)
    sse = ((y_test - predicted) ** 2).sum(axis=0)
    out = {"r2": np.where(sst > 0, 1 - sse / np.where(sst > 0, sst, 1.0), np.nan)}
    direction, flat = _unit(pattern)
    regression, flat_regression = _unit(c)
    for target, g in gradients.items():
        gv = fit.test_gradients(target, g)  # (n_test, rank)
        sens = gv @ direction
        stats = {"effect": (gv @ pattern).mean(axis=0), "sensitivity": sens.mean(axis=0),
                 "tcav": (sens > 0).mean(axis=0), "rcv": (gv @ regression).mean(axis=0)}
        for name in ("sensitivity", "tcav"):
            stats[name][flat] = np.nan
        stats["rcv"][flat_regression] = np.nan
        out[target] = stats
    return out
