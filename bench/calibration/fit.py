"""Least squares for the calibration fits (bench/calibration/calibrate.py), in plain Python: a few
regressors and a few thousand samples need no numpy, and the GPU host's wheel set is not the
CPU host's.

``fit(names, rows, y)`` solves by QR (modified Gram-Schmidt) on columns scaled
to unit norm (regressors here range from 1 to 1e5), then drops samples whose residual is more
than ``OUTLIER_MADS`` robust standard deviations (1.4826 x the median absolute residual) from
zero and refits, twice: a decode interval that spanned an idle server, or a request that queued
behind a burst, is an outlier of the model being fitted, not a sample of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

OUTLIER_MADS = 3.5
ROUNDS = 2


class FitError(ValueError):
    """Too few samples, or regressors that do not vary independently (fatal for that fit)."""


@dataclass(frozen=True)
class Fit:
    names: tuple[str, ...]
    coef: tuple[float, ...]
    stderr: tuple[float, ...]  # standard errors of coef (inf when there is no residual dof)
    n: int  # samples used
    dropped: int  # samples dropped as outliers
    rmse: float  # root mean square residual of the samples used
    r2: float
    residual_quantiles: tuple[float, float, float]  # p5, p50, p95 of the residuals used

    def __getitem__(self, name: str) -> float:
        return self.coef[self.names.index(name)]

    def t(self, name: str) -> float:
        """t statistic of one coefficient (|t| > 2: the data support it)."""
        i = self.names.index(name)
        return self.coef[i] / self.stderr[i] if self.stderr[i] > 0 else math.inf

    def predict(self, row: Sequence[float]) -> float:
        return sum(c * x for c, x in zip(self.coef, row, strict=True))

    def to_json(self) -> dict[str, object]:
        return {
            "coef": dict(zip(self.names, self.coef, strict=True)),
            "stderr": dict(zip(self.names, self.stderr, strict=True)),
            "n": self.n,
            "dropped_outliers": self.dropped,
            "rmse": self.rmse,
            "r2": self.r2,
            "residual_p5_p50_p95": list(self.residual_quantiles),
        }


def fit(names: Sequence[str], rows: Sequence[Sequence[float]], y: Sequence[float]) -> Fit:
    """y ~ rows . coef, robust to outliers (module doc). Raises FitError."""
    keep = list(range(len(y)))
    result = _ols(names, [rows[i] for i in keep], [y[i] for i in keep], len(y))
    for _ in range(ROUNDS):
        res = [y[i] - result.predict(rows[i]) for i in range(len(y))]
        mad = _median([abs(r) for r in (res[i] for i in keep)]) * 1.4826
        if mad <= 0:
            break
        new = [i for i in range(len(y)) if abs(res[i]) <= OUTLIER_MADS * mad]
        if new == keep or len(new) <= len(names):
            break
        keep = new
        result = _ols(names, [rows[i] for i in keep], [y[i] for i in keep], len(y))
    return result


def _ols(names: Sequence[str], rows: Sequence[Sequence[float]], y: Sequence[float], total: int) -> Fit:
    n, k = len(rows), len(names)
    if n <= k:
        raise FitError(f"{n} samples for {k} coefficients ({', '.join(names)})")
    cols = [[float(r[j]) for r in rows] for j in range(k)]
    scale = [math.sqrt(sum(v * v for v in c)) or 1.0 for c in cols]
    q = [[v / s for v in c] for c, s in zip(cols, scale, strict=True)]
    r = [[0.0] * k for _ in range(k)]
    for j in range(k):  # modified Gram-Schmidt
        for i in range(j):
            r[i][j] = sum(a * b for a, b in zip(q[i], q[j], strict=True))
            q[j] = [b - r[i][j] * a for a, b in zip(q[i], q[j], strict=True)]
        r[j][j] = math.sqrt(sum(v * v for v in q[j]))
        if r[j][j] < 1e-9:
            raise FitError(f"{names[j]!r} does not vary independently of the other regressors")
        q[j] = [v / r[j][j] for v in q[j]]
    qty = [sum(a * b for a, b in zip(qi, y, strict=True)) for qi in q]
    rinv = _upper_inverse(r)
    beta = [sum(rinv[i][j] * qty[j] for j in range(k)) for i in range(k)]
    coef = [b / s for b, s in zip(beta, scale, strict=True)]
    res = [yi - sum(c * x for c, x in zip(coef, row, strict=True)) for row, yi in zip(rows, y, strict=True)]
    sse = sum(e * e for e in res)
    sigma2 = sse / (n - k)
    # cov(beta) = sigma2 (R^T R)^-1 = sigma2 Rinv Rinv^T
    stderr = [math.sqrt(sigma2 * sum(v * v for v in rinv[i])) / scale[i] for i in range(k)]
    mean = sum(y) / n
    sst = sum((v - mean) ** 2 for v in y)
    ordered = sorted(res)
    return Fit(
        tuple(names),
        tuple(coef),
        tuple(stderr),
        n,
        total - n,
        math.sqrt(sse / n),
        1.0 - sse / sst if sst > 0 else 1.0,
        (_quantile(ordered, 0.05), _quantile(ordered, 0.5), _quantile(ordered, 0.95)),
    )


def _upper_inverse(r: list[list[float]]) -> list[list[float]]:
    k = len(r)
    inv = [[0.0] * k for _ in range(k)]
    for i in reversed(range(k)):
        inv[i][i] = 1.0 / r[i][i]
        for j in range(i + 1, k):
            inv[i][j] = -sum(r[i][m] * inv[m][j] for m in range(i + 1, j + 1)) / r[i][i]
    return inv


def _median(xs: list[float]) -> float:
    return _quantile(sorted(xs), 0.5) if xs else 0.0


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
