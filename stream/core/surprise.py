"""The count-aware surprise of a window of payments: -log10 of the one-sided binomial tail
P(X >= bad | payments, expected rate). Pure arithmetic; imports nothing outside the standard
library.
"""

from __future__ import annotations

import math

_LN10 = math.log(10.0)
_SQRT2 = math.sqrt(2.0)


def binomial_surprise(bad: int, payments: int, rate: float) -> float:
    """-log10 P(X >= bad) for X ~ Binomial(payments, rate): 0 when `bad` is not above what
    `rate` expects, larger the less likely so many bad payments are. Exact wherever a decision
    can depend on it; within two standard deviations of the expectation (scores below 1.7, far
    under every threshold) the normal approximation is returned, which is much cheaper.

    >>> round(binomial_surprise(2, 3, 0.01), 2)  # 2 of 3 at a small merchant
    3.53
    >>> binomial_surprise(400, 500, 0.01) > 300  # 400 of 500 at a switch
    True
    >>> binomial_surprise(1, 100, 0.01)
    0.0
    """
    if bad <= 0 or payments <= 0 or bad <= payments * rate:
        return 0.0
    if rate <= 0.0:
        return 300.0
    if rate >= 1.0:
        return 0.0
    q = 1.0 - rate
    mean = payments * rate
    sd = math.sqrt(mean * q)
    z = (bad - 0.5 - mean) / sd
    if z < 2.0:
        return max(0.0, -math.log10(0.5 * math.erfc(z / _SQRT2))) if z > 0 else 0.0
    # log of the first term C(n, k) p^k q^(n-k), then the ratio of consecutive terms, which
    # falls as j grows: the rest of the sum is below term * r / (1 - r).
    log_term = (
        math.lgamma(payments + 1)
        - math.lgamma(bad + 1)
        - math.lgamma(payments - bad + 1)
        + bad * math.log(rate)
        + (payments - bad) * math.log(q)
    )
    total, term, j = 1.0, 1.0, bad
    odds = rate / q
    while j < payments:
        ratio = (payments - j) / (j + 1) * odds
        term *= ratio
        total += term
        j += 1
        if ratio < 1.0 and term * ratio < (1.0 - ratio) * total * 1e-9:
            break
    log_p = log_term + math.log(total)
    return max(0.0, -log_p / _LN10)
