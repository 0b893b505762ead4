"""Failure-burst detection: per scope and closed event-time minute, how surprising the failed or
unsettled payments are given what the scope normally does, and one incident per scope and
episode for payment operations (`FAILURE_BURST` alerts: opened, updated, resolved).

Partitions report closed minutes (`signals`); `BurstDetector` merges a minute once every
partition has closed it, so the result depends only on each partition's records. Each scope's
normal rate of bad payments is learned online (`FailureRateModel`, river `stats.EWMean` per
scope and rhythm bucket, pulled toward the parent scope while young). A window is scored
before the minute is learned, with a count-aware surprise: -log10 of the one-sided binomial
tail P(X >= bad | payments, expected rate). Minutes of scopes in or near an incident are not
learned. When several scopes burst, the narrowest scope that explains most of the excess is
reported and the scopes it contains are listed inside it. Imports nothing outside the core
(river's statistics are pure computation).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from river import base, stats

from . import ids
from .alerts import rupiah
from .decisions import SCHEMA_VERSION, Decision
from .eventtime import format_ms
from .signals import BAD, COUNTS, EXPOSURE, MINUTE_MS, merge_scope_minute, scope_minute_view
from .text import escape_text

LEVEL = {"all": 0, "issuer": 1, "switch": 2, "acquirer": 2, "merchant": 3}
LONGEST = 10  # minutes: the longest window (BurstParams.windows_minutes must end with it)
_WIB_OFFSET_MS = 7 * 3600 * 1000
_LN10 = math.log(10.0)
_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class BurstParams:
    """Detector parameters. One threshold for every scope (see README, "Failure bursts")."""

    threshold: float = 7.0  # open an incident at this surprise (-log10 p)
    calm_below: float = 3.0  # a minute is calm when the short windows score below this
    calm_minutes_to_resolve: int = 3
    update_every_minutes: int = 5  # at most one `updated` per this many minutes ...
    update_growth: float = 1.25  # ... and only when affected payments grew by this factor
    windows_minutes: tuple[int, ...] = (1, 3, LONGEST)
    fading_factor: float = 0.002  # per active minute: a memory of about 500 minutes
    prior_payments: float = 400.0  # a young scope leans on its parent until it saw this many
    prior_rate: float = 0.01  # the rate assumed for the root before anything is learned
    min_rate: float = 0.001  # expected rates never go below this
    merchant_own_model_per_min: float = 2.0  # a merchant gets its own scope from this volume
    merchant_pool_below_per_min: float = 1.0  # ... and goes back to its MCC pool below this
    explain_share: float = 0.7  # share of excess (or of bad payments) that counts as explained
    idle_expiry_minutes: int = 7 * 1440  # scopes unseen this long are forgotten
    top_children: int = 5

    def __post_init__(self) -> None:
        if max(self.windows_minutes) != LONGEST:
            raise ValueError(f"the longest window must be {LONGEST} minutes")


# -- the surprise -------------------------------------------------------------------------------


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


# -- the model of one scope's normal rate ------------------------------------------------------


def rhythm_bucket(minute: int) -> int:
    """The rhythm bucket of an event-time minute: weekday or weekend (WIB) times one of six
    four-hour blocks of the WIB day.

    >>> rhythm_bucket(1743213600000 // 60000)  # Saturday 29 March 2025, 09:00 WIB
    8
    """
    local_minute = minute + _WIB_OFFSET_MS // MINUTE_MS
    day = local_minute // 1440
    weekend = (day + 3) % 7 >= 5
    return (6 if weekend else 0) + (local_minute % 1440) // 240


class FailureRateModel(base.AnomalyDetector):
    """The normal rate of bad (failed or unsettled) payments of one scope, by rhythm bucket.

    `x` is a scope-minute: `{"minute": epoch minute, "payments": n, "bad": b}`, optionally
    with `"parent_rate"` (the parent scope's expected rate, used while this scope is young)
    and, for `score_one`, the window to score as `"window_payments"` / `"window_bad"`.
    `score_one` is the binomial surprise of the window; score before `learn_one`.

    >>> m = FailureRateModel()
    >>> for minute in range(600):
    ...     m.learn_one({"minute": minute, "payments": 100, "bad": 1})
    >>> round(m.expected_rate(599), 3)
    0.01
    >>> m.score_one({"minute": 600, "payments": 100, "bad": 2}) < 1.0
    True
    >>> m.score_one({"minute": 600, "payments": 100, "bad": 40}) > 30
    True
    """

    def __init__(
        self,
        fading_factor: float = 0.002,
        prior_payments: float = 400.0,
        prior_rate: float = 0.01,
        min_rate: float = 0.001,
    ) -> None:
        self.fading_factor = fading_factor
        self.prior_payments = prior_payments
        self.prior_rate = prior_rate
        self.min_rate = min_rate
        # Overall and per rhythm bucket: EW mean of bad and of payments per active minute,
        # and how many payments were learned (the weight of the evidence).
        self._overall = _RateStat(fading_factor)
        self._buckets: dict[int, _RateStat] = {}

    def expected_rate(self, minute: int, parent_rate: float | None = None) -> float:
        """The rate of bad payments expected in `minute`: the bucket's learned rate, pulled
        toward the scope's overall rate, pulled toward `parent_rate` (or the prior), each by
        how little has been seen."""
        k = self.prior_payments
        prior = self.prior_rate if parent_rate is None else parent_rate
        rate = self._overall.shrunk(prior, k)
        bucket = self._buckets.get(rhythm_bucket(minute))
        if bucket is not None:
            rate = bucket.shrunk(rate, k)
        return max(rate, self.min_rate)

    def learn_one(self, x: dict[Hashable, Any]) -> None:
        payments = x["payments"]
        if payments <= 0:
            return
        bad = x["bad"]
        self._overall.update(bad, payments)
        key = rhythm_bucket(x["minute"])
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _RateStat(self.fading_factor)
        bucket.update(bad, payments)

    def score_one(self, x: dict[Hashable, Any]) -> float:
        rate = self.expected_rate(x["minute"], x.get("parent_rate"))
        return binomial_surprise(x.get("window_bad", x["bad"]), x.get("window_payments", x["payments"]), rate)


class _RateStat:
    """Bad and total payments per active minute, exponentially weighted. An EWMean starts at
    its first value and forgets it only slowly, so a first minute without failures would pin
    the rate near zero for hours: until `1 / fading_factor` minutes are seen the stat keeps
    plain sums, then seeds the two `stats.EWMean` with their means."""

    __slots__ = ("bad", "payments", "seen", "minutes", "sum_bad", "sum_payments", "fading_factor")

    def __init__(self, fading_factor: float) -> None:
        self.fading_factor = fading_factor
        self.bad: stats.EWMean | None = None
        self.payments: stats.EWMean | None = None
        self.seen = 0.0
        self.minutes = 0
        self.sum_bad = 0.0
        self.sum_payments = 0.0

    def update(self, bad: int, payments: int) -> None:
        self.seen += payments
        self.minutes += 1
        if self.bad is None or self.payments is None:
            self.sum_bad += bad
            self.sum_payments += payments
            if self.minutes * self.fading_factor >= 1.0:
                self.bad, self.payments = stats.EWMean(self.fading_factor), stats.EWMean(self.fading_factor)
                self.bad.update(self.sum_bad / self.minutes)
                self.payments.update(self.sum_payments / self.minutes)
            return
        self.bad.update(bad)
        self.payments.update(payments)

    def rate(self) -> float:
        if self.bad is None or self.payments is None:
            return self.sum_bad / max(self.sum_payments, 1e-9)
        return self.bad.get() / max(self.payments.get(), 1e-9)

    def shrunk(self, toward: float, prior_payments: float) -> float:
        if self.seen <= 0.0:
            return toward
        w = self.seen / (self.seen + prior_payments)
        return w * self.rate() + (1.0 - w) * toward

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


# -- scopes and incidents ---------------------------------------------------------------------


def scope_type(key: str) -> str:
    return key.split(":", 1)[0]


def scope_id(key: str) -> str:
    return key.split(":", 1)[1] if ":" in key else "all"


# A minute of one scope in the ring: (minute, counts, bad shared with other scopes, response
# codes, samples); the dicts and the samples are None when empty, which is most of the time.
MinuteEntry = tuple[int, list[int], dict[str, int] | None, dict[str, int] | None, list[list[Any]] | None]


@dataclass(slots=True)
class Window:
    start_minute: int
    end_minute: int  # exclusive
    counts: list[int]
    shared: dict[str, int]
    codes: dict[str, int]
    samples: list[list[Any]]


@dataclass
class Incident:
    incident_id: str
    start_minute: int
    last_bad_minute: int
    counts: list[int]
    expected_bad: float
    peak_score: float
    children: dict[str, int]
    codes: dict[str, int]
    samples: list[list[Any]]
    first_bad_ms: int | None
    calm_minutes: int = 0
    reported_bad: int = 0
    reported_minute: int = 0


@dataclass
class ScopeState:
    key: str
    parent: str | None
    model: FailureRateModel
    ring: list[MinuteEntry] = field(default_factory=list)
    last_seen_minute: int = 0
    incident: Incident | None = None
    # Minutes up to this one belong to an incident already reported (its own, or one that
    # explained this scope): windows start after it, so an episode is not reported twice.
    covered_through: int = -1

    def window(self, end_minute: int, minutes: int) -> Window:
        """Sums of the ring's minutes in [end - minutes, end)."""
        start = end_minute - minutes
        counts = [0, 0, 0, 0, 0, 0]
        shared: dict[str, int] = {}
        codes: dict[str, int] = {}
        samples: list[list[Any]] = []
        start = max(start, self.covered_through + 1)
        for minute, c, w, k, s in self.ring:
            if minute < start or minute >= end_minute:
                continue
            for i in range(6):
                counts[i] += c[i]
            if w:
                for key, v in w.items():
                    shared[key] = shared.get(key, 0) + v
            if k:
                for key, v in k.items():
                    codes[key] = codes.get(key, 0) + v
            if s:
                samples.extend(s)
        samples.sort(key=lambda x: (x[0], x[1]))
        return Window(start, end_minute, counts, shared, codes, samples)


class _Scored:
    """One scope's scores for the minute; its windows' details are summed only when needed
    (a scope that bursts, or is compared with one)."""

    __slots__ = (
        "state",
        "minute_counts",
        "score",
        "calm_score",
        "minute_score",
        "best_minutes",
        "rate",
        "recent_rate",
        "_windows",
    )

    def __init__(
        self,
        state: ScopeState,
        minute_counts: list[int],
        score: float,
        calm_score: float,
        minute_score: float,
        best_minutes: int,
        rate: float,
        recent_rate: float,
    ) -> None:
        self.state = state
        self.minute_counts = minute_counts
        self.score = score
        self.calm_score = calm_score  # the short windows' best: calm below `calm_below`
        self.minute_score = minute_score  # the minute alone
        self.best_minutes = best_minutes
        self.rate = rate
        self.recent_rate = recent_rate  # bad share of the short windows, for attribution
        self._windows: dict[int, Window] = {}

    def window(self, minutes: int) -> Window:
        win = self._windows.get(minutes)
        if win is None:
            st = self.state
            win = self._windows[minutes] = st.window(st.ring[-1][0] + 1, minutes)
        return win

    @property
    def best(self) -> Window:
        return self.window(self.best_minutes)

    @property
    def long(self) -> Window:
        return self.window(LONGEST)

    @property
    def excess(self) -> float:
        counts = self.long.counts
        return counts[BAD] - counts[0] * self.rate


class BurstDetector:
    """Combines the partitions' closed minutes and turns them into incidents.

    Feed it every `signals` decision of every partition (in each partition's order, any
    interleaving, repeats allowed) with `on_signals`; it returns `FAILURE_BURST` alerts.
    `partitions` are the input partitions (a count means 0..count-1): a minute is complete once
    all of them have closed it.
    """

    def __init__(self, partitions: int | Iterable[int], params: BurstParams | None = None) -> None:
        self.partitions = frozenset(range(partitions) if isinstance(partitions, int) else partitions)
        if not self.partitions:
            raise ValueError("a detector needs at least one partition")
        self.params = params or BurstParams()
        self.through: dict[int, int] = {}
        self.pending: dict[int, dict[str, dict[str, Any]]] = {}
        self.closed_through: int | None = None
        self.scopes: dict[str, ScopeState] = {}
        # Merchants' volume per minute (EW, updated lazily) and whether each has its own scope.
        self.merchant_volume: dict[str, tuple[float, int, bool]] = {}
        self.stats = {"minutes": 0, "scope_minutes": 0, "incidents": 0}
        self._last_expiry_minute = 0

    # -- input ----------------------------------------------------------------------------

    def on_signals(self, value: dict[str, Any]) -> list[Decision]:
        """Take one partition's report; return the alerts of the minutes it completes."""
        p = int(value["partition"])
        if p not in self.partitions:
            raise ValueError(f"a report of partition {p}, not one of the input's {sorted(self.partitions)}")
        through = int(value["through_minute"])
        previous = self.through.get(p)
        if previous is not None and through <= previous:
            return []  # a repeat: already taken
        for entry in value["minutes"]:
            m = int(entry["minute"])
            if (previous is not None and m <= previous) or (
                self.closed_through is not None and m <= self.closed_through
            ):
                continue
            merged = self.pending.setdefault(m, {})
            for key, sm in entry["scopes"].items():
                into = merged.get(key)
                if into is None:
                    merged[key] = scope_minute_view(sm)
                else:
                    merge_scope_minute(into, sm)
        self.through[p] = through
        if len(self.through) < len(self.partitions):
            return []
        complete = min(self.through.values())
        out: list[Decision] = []
        for m in sorted(k for k in self.pending if k <= complete):
            out.extend(self.close_minute(m, self.pending.pop(m)))
        if self.closed_through is None or complete > self.closed_through:
            self.closed_through = complete
        return out

    # -- one complete minute --------------------------------------------------------------

    def close_minute(self, minute: int, data: dict[str, dict[str, Any]]) -> list[Decision]:
        """Score, attribute, learn and update incidents for one complete minute."""
        prm = self.params
        self.stats["minutes"] += 1
        data = self._pool_small_merchants(minute, data)
        longest = max(prm.windows_minutes)
        short = [w for w in prm.windows_minutes if w < longest] or [longest]
        end = minute + 1
        rates: dict[str, float] = {}
        scored: dict[str, _Scored] = {}
        windows = prm.windows_minutes
        for key in sorted(data, key=lambda k: (LEVEL[scope_type(k)], k)):
            sm = data[key]
            st = self._scope(key, sm, minute)
            ring = st.ring
            ring.append((minute, sm["c"], sm.get("w") or None, sm.get("k") or None, sm.get("s") or None))
            oldest = max(end - longest, st.covered_through + 1)
            while ring[0][0] < oldest:
                del ring[0]
                if not ring:
                    break
            st.last_seen_minute = minute
            parent_rate = rates.get(st.parent) if st.parent is not None else None
            if st.parent is not None and parent_rate is None:
                parent = self.scopes.get(st.parent)
                parent_rate = parent.model.expected_rate(minute) if parent is not None else None
            rate = rates[key] = st.model.expected_rate(minute, parent_rate)
            # Payments and bad payments of each window, newest minute first.
            sums = [[0, 0] for _ in windows]
            for entry in ring:
                age = end - entry[0]
                c = entry[1]
                for i, w in enumerate(windows):
                    if age <= w:
                        sums[i][0] += c[0]
                        sums[i][1] += c[BAD]
            best_score, best_minutes, calm_score = -1.0, windows[0], 0.0
            recent_n = recent_bad = 0
            for (n, bad), w in zip(sums, windows, strict=True):
                score = binomial_surprise(bad, n, rate)
                if score > best_score:
                    best_score, best_minutes = score, w
                if w in short:
                    calm_score = max(calm_score, score)
                    recent_n, recent_bad = n, bad
            recent_rate = recent_bad / recent_n if recent_n else 0.0
            minute_score = binomial_surprise(sm["c"][BAD], sm["c"][0], rate)
            scored[key] = _Scored(st, sm["c"], best_score, calm_score, minute_score, best_minutes, rate, recent_rate)
            self.stats["scope_minutes"] += 1
        out = self._incidents(minute, scored)
        for key, sc in scored.items():
            st = self.scopes[key]
            if st.incident is None and sc.score < prm.calm_below:
                st.model.learn_one({"minute": minute, "payments": sc.minute_counts[0], "bad": sc.minute_counts[BAD]})
        if minute - self._last_expiry_minute >= 60:
            self._expire(minute)
        return out

    def _scope(self, key: str, sm: dict[str, Any], minute: int) -> ScopeState:
        st = self.scopes.get(key)
        if st is None:
            t = scope_type(key)
            if t == "all":
                parent = None
            elif t == "merchant" and "a" in sm and sm["a"][1] and not scope_id(key).startswith("MCC-"):
                parent = "acquirer:" + sm["a"][1]
            else:
                parent = "all"
            prm = self.params
            model = FailureRateModel(prm.fading_factor, prm.prior_payments, prm.prior_rate, prm.min_rate)
            st = self.scopes[key] = ScopeState(key, parent, model, last_seen_minute=minute)
        return st

    def _pool_small_merchants(self, minute: int, data: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # A merchant is judged on its own only where its volume makes a judgement possible;
        # the others are pooled per MCC. The decision uses the volume learned before this minute.
        prm = self.params
        alpha = prm.fading_factor * 10  # volume follows faster than rates: about 50 minutes
        out: dict[str, dict[str, Any]] = {}
        for key in sorted(data):
            sm = data[key]
            if not key.startswith("merchant:"):
                out[key] = sm
                continue
            volume, last, own = self.merchant_volume.get(key, (0.0, minute, False))
            volume *= (1.0 - alpha) ** max(0, minute - last)
            target = key
            if not own and volume >= prm.merchant_own_model_per_min:
                own = True
            elif (
                own
                and volume < prm.merchant_pool_below_per_min
                and (key not in self.scopes or self.scopes[key].incident is None)
            ):
                own = False
            if not own:
                mcc = sm.get("a", ["", "", ""])[0] or "unknown"
                target = f"merchant:MCC-{mcc}"
            volume = volume * (1.0 - alpha) + alpha * sm["c"][0]
            self.merchant_volume[key] = (volume, minute + 1, own)
            into = out.get(target)
            if into is None:
                into = out[target] = scope_minute_view(sm)
            else:
                merge_scope_minute(into, sm)
            if target != key:
                into.pop("a", None)  # a pool has no single merchant's attributes
        return out

    def _expire(self, minute: int) -> None:
        self._last_expiry_minute = minute
        horizon = minute - self.params.idle_expiry_minutes
        for key in [k for k, st in self.scopes.items() if st.last_seen_minute < horizon and st.incident is None]:
            del self.scopes[key]
        for key in [k for k, (_v, last, _o) in self.merchant_volume.items() if last < horizon]:
            del self.merchant_volume[key]

    # -- attribution and incidents ---------------------------------------------------------

    def _overlap(self, a: _Scored, b_key: str) -> int:
        """Bad payments (long window) in both scope `a` and scope `b_key`."""
        if b_key == "all":
            return a.long.counts[BAD]
        return a.long.shared.get(b_key, 0)

    def _shared(self, scored: dict[str, _Scored], a: str, b: str) -> int:
        if a == "all" or b == "all":
            other = b if a == "all" else a
            return scored[other].long.counts[BAD] if other in scored else 0
        if a in scored and b in scored[a].long.shared:
            return self._overlap(scored[a], b)
        if b in scored:
            return self._overlap(scored[b], a)
        return 0

    def _incidents(self, minute: int, scored: dict[str, _Scored]) -> list[Decision]:
        prm = self.params
        share = prm.explain_share
        bursting = sorted(k for k, sc in scored.items() if sc.score >= prm.threshold)
        # 1. A scope is explained by a narrower bursting scope that covers most of its excess
        #    (a busy merchant's failure explains its acquirer, its switch and `all`); between
        #    scopes of one level (a switch and an acquirer), by the one with the higher share of
        #    bad payments: the cause is concentrated, the other scope dilutes it.
        suppressed: set[str] = set()
        for s in bursting:
            es = scored[s].excess
            for c in bursting:
                if c == s or es <= 0:
                    continue
                ls, lc = LEVEL[scope_type(s)], LEVEL[scope_type(c)]
                if lc < ls or (lc == ls and scored[c].recent_rate <= scored[s].recent_rate):
                    continue
                if self._shared(scored, c, s) >= share * es:
                    suppressed.add(s)
                    break
        # 2. Scopes that remain, and scopes with an open incident, are reported; a remaining
        #    scope whose excess mostly lies inside a broader reported one is folded into it.
        open_keys = {k for k, st in self.scopes.items() if st.incident is not None}
        heads = sorted((set(bursting) - suppressed) | open_keys, key=lambda k: (LEVEL[scope_type(k)], k))
        folded: dict[str, str] = {}
        for c in heads:
            if c in open_keys or c not in scored:
                continue
            sc_c = scored[c]
            own = sc_c.excess if sc_c.excess > 0 else sc_c.long.counts[BAD]
            if own <= 0:
                continue
            for s in heads:
                if s == c or s in folded or LEVEL[scope_type(s)] > LEVEL[scope_type(c)]:
                    continue
                if LEVEL[scope_type(s)] == LEVEL[scope_type(c)] and s not in open_keys:
                    continue
                if self._shared(scored, c, s) >= share * own:
                    folded[c] = s
                    break
        # What is explained or folded belongs to this minute's incidents: its windows restart.
        for key in (suppressed | set(folded)) - open_keys:
            self.scopes[key].covered_through = minute
        out: list[Decision] = []
        for key in heads:
            st = self.scopes[key]
            sc = scored.get(key)
            if st.incident is None:
                if key in folded or sc is None or sc.score < prm.threshold:
                    continue
                out.append(self._open(st, sc, minute, scored))
            else:
                out.extend(self._follow(st, sc, minute, scored))
        return out

    def _open(self, st: ScopeState, sc: _Scored, minute: int, scored: dict[str, _Scored]) -> Decision:
        win = sc.best
        first_bad = min((s[0] for s in win.samples), default=None)
        children: dict[str, int] = {}
        for m in range(win.start_minute, win.end_minute):
            for k, v in self._children_at(st.key, scored, m).items():
                children[k] = children.get(k, 0) + v
        inc = Incident(
            incident_id=ids.incident_id(scope_type(st.key), scope_id(st.key), win.start_minute * MINUTE_MS),
            start_minute=win.start_minute,
            last_bad_minute=minute,
            counts=list(win.counts),
            expected_bad=win.counts[0] * sc.rate,
            peak_score=sc.score,
            children=children,
            codes=dict(win.codes),
            samples=win.samples[:5],
            first_bad_ms=first_bad,
            reported_bad=win.counts[BAD],
            reported_minute=minute,
        )
        st.incident = inc
        self.stats["incidents"] += 1
        return self._alert(st, inc, "opened", minute, sc)

    def _children_at(self, key: str, scored: dict[str, _Scored], minute: int) -> dict[str, int]:
        """Bad payments in `minute` of the scopes inside `key`: narrower scopes, and for a switch
        its acquirers (for an acquirer its switches), which cut across it."""
        kind = scope_type(key)
        level = LEVEL[kind]
        found: dict[str, int] = {}
        for other in scored:
            other_kind = scope_type(other)
            if other == key or other_kind == kind or LEVEL[other_kind] < level or other_kind in ("all", "issuer"):
                continue
            for m, c, w, _k, _s in self.scopes[other].ring:
                if m != minute:
                    continue
                n = c[BAD] if key == "all" else (w or {}).get(key, 0)
                if n:
                    found[other] = found.get(other, 0) + n
        return found

    def _follow(self, st: ScopeState, sc: _Scored | None, minute: int, scored: dict[str, _Scored]) -> list[Decision]:
        inc = st.incident
        assert inc is not None
        prm = self.params
        if sc is None:
            return []  # no payments in the scope this minute: no evidence either way
        counts = sc.minute_counts
        for i in range(6):
            inc.counts[i] += counts[i]
        inc.expected_bad += counts[0] * sc.rate
        inc.peak_score = max(inc.peak_score, sc.score)
        for k, v in self._children_at(st.key, scored, minute).items():
            inc.children[k] = inc.children.get(k, 0) + v
        ring_last = st.ring[-1]
        if ring_last[3]:
            for k, v in ring_last[3].items():
                inc.codes[k] = inc.codes.get(k, 0) + v
        if ring_last[4] and len(inc.samples) < 5:
            inc.samples.extend(ring_last[4][: 5 - len(inc.samples)])
        if inc.first_bad_ms is None and ring_last[4]:
            inc.first_bad_ms = ring_last[4][0][0]
        if sc.minute_score >= prm.calm_below:
            inc.last_bad_minute = minute
        if sc.calm_score < prm.calm_below:
            inc.calm_minutes += 1
            if inc.calm_minutes >= prm.calm_minutes_to_resolve:
                st.incident = None
                st.covered_through = minute  # its minutes belong to this episode, not to the next
                return [self._alert(st, inc, "resolved", minute, sc)]
            return []
        inc.calm_minutes = 0
        if minute - inc.reported_minute >= prm.update_every_minutes and inc.counts[BAD] >= prm.update_growth * max(
            inc.reported_bad, 1
        ):
            inc.reported_minute = minute
            inc.reported_bad = inc.counts[BAD]
            return [self._alert(st, inc, "updated", minute, sc)]
        return []

    # -- the alert ------------------------------------------------------------------------

    def _alert(self, st: ScopeState, inc: Incident, status: str, minute: int, sc: _Scored) -> Decision:
        key = st.key
        stype, sid = scope_type(key), scope_id(key)
        end_minute = inc.last_bad_minute + 1 if status == "resolved" else minute + 1
        start_ms, end_ms = inc.start_minute * MINUTE_MS, end_minute * MINUTE_MS
        c = inc.counts
        payments, bad = c[0], c[BAD]
        observed: dict[str, float] = {name: c[i] for i, name in enumerate(COUNTS)}
        observed["bad_rate"] = round(bad / payments, 4) if payments else 0.0
        expected = {
            "bad": round(inc.expected_bad, 2),
            "bad_rate": round(inc.expected_bad / payments, 4) if payments else 0,
        }
        decided_ms = (minute + 1) * MINUTE_MS
        oldest_s = max(0.0, (decided_ms - inc.first_bad_ms) / 1000) if inc.first_bad_ms is not None else 0.0
        children = sorted(inc.children.items(), key=lambda kv: (-kv[1], kv[0]))
        top: list[dict[str, Any]] = []
        per_type: dict[str, int] = {}
        for child, n in children:
            t = scope_type(child)
            if per_type.get(t, 0) >= self.params.top_children:
                continue
            per_type[t] = per_type.get(t, 0) + 1
            top.append({"scope": {"type": t, "id": scope_id(child)}, "observed": {"bad": n}})
        name = _scope_name(stype, sid)
        since = _wib_clock(start_ms)
        if status == "resolved":
            summary = (
                f"RESOLVED {name}: {bad} of {payments} payments failed or unsettled from {since} to "
                f"{_wib_clock(end_ms)} WIB (expected {_count(inc.expected_bad)}); "
                f"{_short_rupiah(c[EXPOSURE])} was exposed"
            )
            severity = "info"
        else:
            worst = ", ".join(
                f"{_scope_name(t['scope']['type'], t['scope']['id'])} {t['observed']['bad']}" for t in top[:3]
            )
            summary = (
                f"{name}: {bad} of {payments} payments failed or unsettled since {since} WIB "
                f"(expected {_count(inc.expected_bad)}); {_short_rupiah(c[EXPOSURE])} exposed"
                + (f"; most affected: {worst}" if worst else "")
            )
            severity = "warning" if stype == "merchant" else "critical"
        value: dict[str, Any] = {
            "alert_id": ids.alert_id("FAILURE_BURST", inc.incident_id, status, minute),
            "kind": "FAILURE_BURST",
            "severity": severity,
            "scope": {"type": stype, "id": sid},
            "window": {"start": format_ms(start_ms), "end": format_ms(end_ms)},
            "observed": observed,
            "expected": expected,
            "score": round(sc.score if status != "resolved" else inc.peak_score, 2),
            "references": [s[1] for s in inc.samples],
            "summary": summary,
            "occurred_at": format_ms(decided_ms),
            "partition": None,
            "status": status,
            "incident_id": inc.incident_id,
            "exposure_idr": c[EXPOSURE],
            "affected_payments": bad,
            "oldest_pending_s": oldest_s,
            "top_children": top,
            "samples": [
                {"reference": s[1], "requested_at": format_ms(s[0]), "state": s[2], "account_id_masked": s[3]}
                for s in inc.samples
            ],
            "response_codes": dict(sorted(inc.codes.items())),
            "schema_version": SCHEMA_VERSION,
        }
        if not value["samples"] or any(s["account_id_masked"] is None for s in value["samples"]):
            value["samples"] = [{k: v for k, v in s.items() if v is not None} for s in value["samples"]]
        return Decision("alerts", sid.encode("utf-8"), value, decided_ms)


def _scope_name(stype: str, sid: str) -> str:
    if stype == "all":
        return "All payments"
    if stype == "merchant" and sid.startswith("MCC-"):
        return f"Small merchants of MCC {escape_text(sid[4:])}"
    return f"{stype.capitalize()} {escape_text(sid)}"


def _count(x: float) -> str:
    return f"{x:.1f}" if x < 10 else f"{x:.0f}"


def _wib_clock(at_ms: int) -> str:
    local = (at_ms + _WIB_OFFSET_MS) // MINUTE_MS
    return f"{(local // 60) % 24:02d}:{local % 60:02d}"


def _short_rupiah(amount: int) -> str:
    """Rupiah for a summary line.

    >>> _short_rupiah(31_200_000), _short_rupiah(850_000)
    ('Rp 31.2 m', 'Rp 850.000')
    """
    if amount >= 1_000_000:
        return f"Rp {amount / 1_000_000:.1f} m"
    return rupiah(amount)
