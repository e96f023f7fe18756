"""Which nuclear properties drive a map's relevance: within-patch rank correlations and regressions over
the per-nucleus table of `nuclei`, compared with the input-only controls, and a report section.

For every target x method x setting x score and each relevance kind (signed: relevance_mean, positive:
positive_mean), both the relevance and each property are turned into ranks within each map, centred
((rank - 0.5) / n - 0.5, so a map's nuclei average 0). Comparing nuclei only with the other nuclei of
their own patch keeps a bright map, or a patch whose nuclei are all large, from standing in for a
preference among nuclei: the question is "within a patch, does the map favour the larger nuclei?".
- rho: the correlation of the two centred ranks over all nuclei (a within-map Spearman rho, pooled over
  maps; exactly 1 when relevance orders every patch's nuclei as the property does). Its 95 % CI is a
  seeded cluster bootstrap over patches (the nuclei of one patch share one map and are not independent);
  every property and method of a target is resampled with the same patches, so they compare paired.
- beta: a multiple regression of the centred relevance rank on all properties at once, each demeaned
  within its map (the within, or fixed-effects, transform: the outcome holds no between-map part) and
  divided by its standard deviation, so beta is the change in relevance rank per SD of within-patch
  variation, the other properties held fixed (a property that is a linear combination of those before
  it in PROPERTIES order gets none). Its CI uses cluster-robust (sandwich, CR1) standard errors
  by patch and a t quantile with patches - 1 degrees of freedom: one closed-form fit where a bootstrap
  would refit thousands of times, and the bootstrap already guards rho.
A property "drives" a method's relevance for a target when rho's CI excludes 0 and |rho| beats the
|rho| of each input-only control (darkness, edges) on the same patches: what the image alone already
prefers is no finding. Orientation is an angle on [0, pi): its rho only reads a monotone trend there.
"""

from __future__ import annotations

import numpy as np

from histoxai.errors import InputError
from histoxai.saliency.controls import INPUT_CONTROLS
from histoxai.saliency.nuclei import PROPERTIES
from histoxai.saliency.nucleus_relevance import CONTROL_PREFIX

KINDS = {"signed": "relevance_mean", "positive": "positive_mean"}
GROUP = ("target", "method", "setting", "score")
PATCH = ("sample", "row", "col")
BOOTSTRAP = 2000
CONFIDENCE = 0.95
MIN_PATCHES = 5  # fewer patches make the bootstrap CI meaningless
DRIVES = "drives"


def _centred_ranks(values, patches: np.ndarray) -> np.ndarray:
    import pandas as pd

    series = pd.Series(np.asarray(values, np.float64))
    grouped = series.groupby(patches)
    return ((grouped.rank(method="average") - 0.5) / grouped.transform("count") - 0.5).to_numpy()


def _correlation(sums: np.ndarray) -> np.ndarray:
    """Pearson r from sums (..., 6): n, sx, sy, sxx, syy, sxy."""
    n, sx, sy, sxx, syy, sxy = np.moveaxis(sums, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sy / n
        var = (sxx - sx**2 / n) * (syy - sy**2 / n)
        return np.where(var > 1e-12 * np.maximum(n, 1) ** 2, cov / np.sqrt(np.abs(var)), np.nan)


def _bootstrap_rho(u, v, codes, counts) -> tuple[float, float, float]:
    """rho and its percentile CI; counts (B, G): how often each patch is drawn per resample."""
    groups = counts.shape[1]
    sums = np.stack([np.bincount(codes, w, minlength=groups)
                     for w in (np.ones_like(u), u, v, u * u, v * v, u * v)], axis=1)  # (G, 6)
    rho = float(_correlation(sums.sum(axis=0)))
    if groups < 2 or not np.isfinite(rho):
        return rho, np.nan, np.nan
    boot = _correlation(counts @ sums)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.nanpercentile(boot, [tail, 100 - tail]) if np.isfinite(boot).any() else (np.nan, np.nan)
    return rho, float(low), float(high)


def _regression(y, x, codes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares y ~ x (already centred within maps) with CR1 cluster-robust SEs; (beta, low, high)."""
    from scipy import stats

    n, k = x.shape
    groups = np.unique(codes).size
    nan = np.full(k, np.nan)
    if k == 0 or n <= k or groups < 2:
        return nan, nan, nan
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    scores = x * (y - x @ beta)[:, None]
    by_patch = np.stack([np.bincount(codes, scores[:, j]) for j in range(k)], axis=1)
    bread = np.linalg.pinv(x.T @ x)
    scale = groups / (groups - 1) * (n - 1) / (n - k)
    se = np.sqrt(np.clip(np.diag(bread @ (by_patch.T @ by_patch) @ bread) * scale, 0, None))
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, groups - 1) * se
    return beta, beta - half, beta + half


def _independent(names: list[str], frame) -> list[str]:
    """The properties, in order, that are no linear combination of those kept before them: a property
    that only restates another (at small phantom scales every semi-minor axis is clamped, so area and
    elongation order nuclei alike) has no beta of its own."""
    kept: list[str] = []
    for name in names:
        if np.linalg.matrix_rank(frame[[*kept, name]].to_numpy(np.float64)) == len(kept) + 1:
            kept.append(name)
    return kept


def _fit(part, properties, kind: str, column: str, counts_for) -> list[dict]:
    """The rows of one target x method x setting x score and relevance kind."""
    import pandas as pd

    patch = part.groupby(list(PATCH), sort=False).ngroup().to_numpy()
    y = part[column].to_numpy(np.float64)
    rows = {}
    for prop in properties:
        x = part[prop].to_numpy(np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        sizes = np.bincount(patch[ok], minlength=patch.max() + 1)
        ok &= sizes[patch] >= 2  # a map with one nucleus orders nothing
        _, codes = np.unique(patch[ok], return_inverse=True)
        u, v = _centred_ranks(x[ok], codes), _centred_ranks(y[ok], codes)
        groups = int(codes.max()) + 1 if codes.size else 0
        rho, low, high = _bootstrap_rho(u, v, codes, counts_for(groups)) if groups else (np.nan,) * 3
        rows[prop] = {"property": prop, "kind": kind, "nuclei": int(ok.sum()), "patches": groups,
                      "rho": rho, "rho_low": low, "rho_high": high,
                      "beta": np.nan, "beta_low": np.nan, "beta_high": np.nan}
    # the regression: nuclei with every usable property known, in maps with >= 2 of them
    usable = [p for p in properties if np.isfinite(part[p].to_numpy(np.float64)).any()]
    frame = pd.DataFrame({p: part[p].to_numpy(np.float64) for p in usable}).assign(_y=y, _patch=patch)
    frame = frame[np.isfinite(frame.to_numpy(np.float64)).all(axis=1)]
    frame = frame[frame.groupby("_patch")["_y"].transform("size") >= 2]
    if len(frame):
        demeaned = frame[usable] - frame.groupby("_patch")[usable].transform("mean")
        spread = demeaned.std(ddof=0)
        usable = _independent([p for p in usable if spread[p] > 1e-12], demeaned / spread.replace(0, 1))
        _, codes = np.unique(frame["_patch"].to_numpy(), return_inverse=True)
        x = (demeaned[usable] / spread[usable]).to_numpy(np.float64)
        beta, low, high = _regression(_centred_ranks(frame["_y"], codes), x, codes)
        for j, prop in enumerate(usable):
            rows[prop].update(beta=float(beta[j]), beta_low=float(low[j]), beta_high=float(high[j]))
    return list(rows.values())


def property_relevance(table, *, properties=None, bootstrap: int = BOOTSTRAP, seed: int = 0):
    """Per target x method x setting x score x property x relevance kind: nuclei, patches, rho with its
    bootstrap CI, beta with its cluster-robust CI (see the module docstring). `table`: nuclei_table's
    output; properties: the PROPERTIES columns it has, unless given."""
    import pandas as pd

    need = [*PATCH, "target", "method", *KINDS.values()]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise InputError(f"nuclei table: lacks columns {missing}; expected the output of nuclei_table")
    properties = [p for p in PROPERTIES if p in table.columns] if properties is None else list(properties)
    absent = [p for p in properties if p not in table.columns]
    if absent or not properties:
        raise InputError(f"properties {absent or properties}: expected columns of the nuclei table, e.g. "
                         f"{', '.join(PROPERTIES)}")
    if not isinstance(bootstrap, int | np.integer) or bootstrap < 100:
        raise InputError(f"bootstrap {bootstrap!r}: expected an integer of at least 100 resamples")
    group = [c for c in GROUP if c in table.columns]
    work = table.assign(**{c: table[c].fillna("") for c in group if c in ("setting", "score")})
    cache: dict[int, np.ndarray] = {}

    def counts_for(groups: int) -> np.ndarray:
        # one seeded draw per patch count, shared by every property and method: paired comparisons
        if groups not in cache:
            rng = np.random.default_rng(seed)
            cache[groups] = rng.multinomial(groups, np.full(groups, 1 / groups), size=bootstrap).astype(float)
        return cache[groups]

    rows = []
    for key, part in work.groupby(group, sort=False):
        labels = dict(zip(group, key, strict=True))
        for kind, column in KINDS.items():
            rows += [{**labels, **row} for row in _fit(part, properties, kind, column, counts_for)]
    columns = [*group, "property", "kind", "nuclei", "patches", "rho", "rho_low", "rho_high", "beta",
               "beta_low", "beta_high"]
    return pd.DataFrame(rows, columns=columns)


def _verdict(row, control: dict[str, float]) -> tuple[str, str]:
    rho, low, high = row["rho"], row["rho_low"], row["rho_high"]
    if not np.isfinite(rho) or row["patches"] < MIN_PATCHES or not np.isfinite(low):
        return "undefined", (f"{row['patches']} patches with >= 2 nuclei (need {MIN_PATCHES})"
                             if row["patches"] < MIN_PATCHES else "no variation in relevance or property")
    interval = f"rho {rho:+.2f} [{low:+.2f}, {high:+.2f}]"
    if low <= 0 <= high:
        return "no evidence", f"{interval} includes 0"
    if not control:
        return "untested", f"{interval}; no control maps ({', '.join(INPUT_CONTROLS)}) for this target"
    known = {k: v for k, v in control.items() if np.isfinite(v)}
    matched = [f"{k} {v:+.2f}" for k, v in known.items() if abs(v) >= abs(rho)]
    if matched:
        return "not beyond controls", f"{interval}; the input alone does as well: {', '.join(matched)}"
    way = "higher" if rho > 0 else "lower"
    beaten = ", ".join(f"{k} {v:+.2f}" for k, v in known.items()) or "controls undefined"
    return DRIVES, f"{interval}: more relevance on nuclei with {way} {row['property']}; beats {beaten}"


def findings(property_table):
    """Per method row of property_relevance (controls excluded): the controls' rho beside it (darkness_rho,
    edges_rho) and verdict ('drives', 'no evidence', 'not beyond controls', 'untested', 'undefined') with
    its reason."""
    import pandas as pd

    table = property_table
    is_control = table["method"].astype(str).str.startswith(CONTROL_PREFIX)
    controls = table[is_control]
    lookup = {(t, p, k, m[len(CONTROL_PREFIX):]): r for t, p, k, m, r in zip(
        controls["target"], controls["property"], controls["kind"], controls["method"], controls["rho"],
        strict=True)}
    rows = []
    for row in table[~is_control].to_dict("records"):
        keys = {name: (row["target"], row["property"], row["kind"], name) for name in INPUT_CONTROLS}
        control = {name: lookup[key] for name, key in keys.items() if key in lookup}
        verdict, reason = _verdict(row, control)
        rows.append({**row, **{f"{name}_rho": control.get(name, np.nan) for name in INPUT_CONTROLS},
                     "verdict": verdict, "reason": reason})
    columns = [*table.columns, *(f"{n}_rho" for n in INPUT_CONTROLS), "verdict", "reason"]
    return pd.DataFrame(rows, columns=columns)


def _interval(value, low, high) -> str:
    return "–" if not np.isfinite(value) else f"{value:+.2f} [{low:+.2f}, {high:+.2f}]"


def _label(row) -> str:
    setting = row.get("setting", "")
    return f"{row['method']}:{setting}" if isinstance(setting, str) and setting else str(row["method"])


def markdown(property_table, found) -> str:
    """A report section: what was measured, the drivers found, and a table of every method x property."""
    lines = ["## Which nuclear properties drive the maps", "",
             "Per nucleus, the map's mean relevance (signed, and its positive part) beside the nucleus's "
             "properties, both ranked within each map. rho: the pooled within-map rank correlation, 95 % CI "
             "by a seeded cluster bootstrap over patches. beta: all properties at once (within-map, per SD), "
             "95 % CI from cluster-robust standard errors by patch. A property drives a method's relevance "
             "when rho's CI excludes 0 and |rho| beats the darkness and edges maps on the same patches.", ""]
    drivers = found[found["verdict"] == DRIVES]
    if drivers.empty:
        lines += ["No property drives any method's relevance beyond the controls.", ""]
    else:
        lines += ["Drivers:", ""]
        lines += [f"- {r['target']} {_label(r)} ({r['kind']}): {r['reason']}"
                  for r in drivers.to_dict("records")]
        lines.append("")
    lines += ["| target | method | score | relevance | property | rho [95 % CI] | beta [95 % CI] | "
              "darkness rho | edges rho | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in found.to_dict("records"):
        controls = " | ".join("–" if not np.isfinite(r[f"{n}_rho"]) else f"{r[f'{n}_rho']:+.2f}"
                              for n in INPUT_CONTROLS)
        lines.append(f"| {r['target']} | {_label(r)} | {r.get('score', '')} | {r['kind']} | "
                     f"{r['property']} | {_interval(r['rho'], r['rho_low'], r['rho_high'])} | "
                     f"{_interval(r['beta'], r['beta_low'], r['beta_high'])} | {controls} | {r['verdict']} |")
    tested = int(np.isfinite(found["rho_low"]).sum()) if len(found) else 0
    patches = property_table.groupby("target")["patches"].max() if len(property_table) else {}
    lines += ["", f"{tested} rows with a CI at 95 %: about {tested / 20:.1f} would exclude 0 by chance "
                  "alone, which is one reason a finding must also beat the controls. "
                  "Patches with >= 2 nuclei: "
                  + (", ".join(f"{t} {int(n)}" for t, n in patches.items()) or "none") + "."]
    return "\n".join(lines) + "\n"
