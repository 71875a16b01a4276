"""Two-sample drift statistics: PSI (effect size) with KS or chi-square (significance).

PSI (population stability index) compares binned proportions, ``sum((c - r) * ln(c / r))``;
the usual reading is < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 significant shift
(Yurdakul 2018, "Statistical properties of population stability index"). With thousands of
samples a KS or chi-square test finds "significant" differences that do not matter, and PSI
alone is noisy on small windows, so drift is declared when both agree.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref, same, shifted = rng.normal(0, 1, 2000), rng.normal(0, 1, 500), rng.normal(1, 1, 500)
>>> round(numeric(ref, same).psi, 2) < 0.1, numeric(ref, shifted).psi > 0.2, numeric(ref, shifted).p_value < 1e-6
(True, True, True)
>>> c = categorical({"a": 500, "b": 500}, {"a": 100, "b": 400})
>>> round(c.psi, 3), c.test
(0.416, 'chi2')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats

EPS = 1e-4  # floor for empty bins: PSI is infinite otherwise


@dataclass(frozen=True, slots=True)
class Comparison:
    psi: float
    p_value: float
    test: str  # "ks" or "chi2"


def psi(ref: np.ndarray, cur: np.ndarray) -> float:
    """PSI between two proportion vectors of the same bins."""
    r = np.maximum(ref, EPS)
    c = np.maximum(cur, EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def quantile_edges(ref: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (duplicates from ties removed)."""
    return np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))


def numeric(ref: np.ndarray, cur: np.ndarray, bins: int = 10, edges: np.ndarray | None = None) -> Comparison:
    """PSI over reference-quantile bins and the two-sample Kolmogorov-Smirnov p-value."""
    e = quantile_edges(ref, bins) if edges is None else edges
    r = np.bincount(np.searchsorted(e, ref, side="right"), minlength=len(e) + 1) / len(ref)
    c = np.bincount(np.searchsorted(e, cur, side="right"), minlength=len(e) + 1) / len(cur)
    p = float(stats.ks_2samp(ref, cur).pvalue)
    return Comparison(psi(r, c), p, "ks")


def categorical(ref: Mapping[str, int], cur: Mapping[str, int]) -> Comparison:
    """PSI over categories and the chi-square test of homogeneity (2 x K contingency table)."""
    cats = sorted(set(ref) | set(cur))
    r = np.array([ref.get(k, 0) for k in cats], dtype=float)
    c = np.array([cur.get(k, 0) for k in cats], dtype=float)
    if len(cats) < 2:
        return Comparison(0.0, 1.0, "chi2")
    table = np.vstack([r, c])
    table = table[:, table.sum(axis=0) > 0]
    p = float(stats.chi2_contingency(table, correction=False).pvalue)
    return Comparison(psi(r / r.sum(), c / c.sum()), p, "chi2")
