"""The kernel study's statistics, in plain Python (no scipy): Student's t distribution through the regularised
incomplete beta function, 95 % intervals of a mean, and Welch's unequal-variance t-test.

- ``t_cdf(t, df)`` = 1 - I_x(df/2, 1/2)/2 for t > 0, x = df/(df + t²) (Abramowitz & Stegun 26.7.1), with I_x from
  its continued fraction (Numerical Recipes' ``betacf``, modified Lentz), accurate to ~1e-14;
- ``t_quantile(p, df)`` by bisection on ``t_cdf``;
- ``mean_ci95(xs)``: mean ± t_{0.975, n-1}·s/√n;
- ``welch(xs, ys)``: t = (x̄ - ȳ)/√(s_x²/n_x + s_y²/n_y), Welch-Satterthwaite degrees of freedom, two-sided p;
- ``fisher_exact(a, n, b, m)``: Fisher's exact test of two rates a/n and b/m (two-sided, the hypergeometric tables
  no likelier than the one observed), for outcomes that are either-or, such as "a seed learned the task".
"""
from __future__ import annotations

import math
import statistics
from typing import Sequence

__all__ = ["betainc", "t_cdf", "t_quantile", "mean_ci95", "welch", "fisher_exact"]

_EPS = 1e-15
_TINY = 1e-300


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz); converges fast for x < (a + 1)/(a + b + 2)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (df need not be whole)."""
    if df <= 0:
        raise ValueError(f"Student's t needs df > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with ``t_cdf(t, df) = p``, 0 < p < 1, by bisection (to ~1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


def mean_ci95(xs: Sequence[float]) -> tuple[float, float] | None:
    """The 95 % confidence interval of the mean of ``xs`` (Student's t, n - 1 degrees of freedom); None for n < 2."""
    n = len(xs)
    if n < 2:
        return None
    mean, half = statistics.fmean(xs), t_quantile(0.975, n - 1) * statistics.stdev(xs) / math.sqrt(n)
    return mean - half, mean + half


def welch(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float] | None:
    """Welch's two-sided t-test of equal means: (t, degrees of freedom, p); None when a sample has fewer than 2.

    Two samples without any spread give p = 1 for equal means and p = 0 otherwise (t = ±inf)."""
    nx, ny = len(xs), len(ys)
    if nx < 2 or ny < 2:
        return None
    vx, vy = statistics.variance(xs) / nx, statistics.variance(ys) / ny
    diff = statistics.fmean(xs) - statistics.fmean(ys)
    if vx + vy == 0.0:
        return (0.0, float(nx + ny - 2), 1.0) if diff == 0.0 else (math.copysign(math.inf, diff), float(nx + ny - 2),
                                                                   0.0)
    t = diff / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx * vx / (nx - 1) + vy * vy / (ny - 1))
    return t, df, 2.0 * t_cdf(-abs(t), df)


def fisher_exact(a: int, n: int, b: int, m: int) -> float:
    """Two-sided p of Fisher's exact test that a of n and b of m come from one rate: the sum of the hypergeometric
    probabilities (margins fixed) of every table no likelier than the observed one (as scipy's ``fisher_exact``)."""
    if not (0 <= a <= n and 0 <= b <= m and n > 0 and m > 0):
        raise ValueError(f"Fisher's test needs 0 <= a <= n and 0 <= b <= m with n, m > 0, got {a}/{n} and {b}/{m}")
    total = a + b
    probs = {k: math.comb(n, k) * math.comb(m, total - k) / math.comb(n + m, total)
             for k in range(max(0, total - m), min(n, total) + 1)}
    observed = probs[a] * (1.0 + 1e-7)  # ties within rounding count as "no likelier"
    return min(1.0, sum(p for p in probs.values() if p <= observed))
