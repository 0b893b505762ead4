"""Failure-burst detection, the entry point: `BurstDetector` takes the partitions' closed minutes
(`signals`) and returns `FAILURE_BURST` alerts, one incident per scope and episode.

It ties the parts together: the partitions' reports merge into complete minutes (`merge`); each
scope's windows (`scopes`) are scored against its learned normal rate (`ratemodel`, with the
binomial `surprise`) before the minute is learned; when several scopes burst, the narrowest scope
that explains most of the excess is reported and the scopes it contains are listed inside it
(attribution, here); incidents open, grow and resolve (`incidents`). Small merchants are pooled
per MCC. Imports nothing outside the core.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from functools import lru_cache
from typing import Any

from . import ids
from .decisions import Decision
from .holdtally import is_hold_report
from .incidents import Incident, IncidentBook, incident_alert, scope_limit_alert
from .merge import PartitionMerge
from .ratemodel import FailureRateModel, rhythm_bucket
from .scopes import LEVEL, LONGEST, MinuteEntry, ScopeState, ScoredScope, Window, scope_id, scope_type
from .signals import BAD, MINUTE_MS, add_codes, capped_codes, merge_scope_minute, pool_id, scope_minute_view
from .steps import run_to_end
from .surprise import binomial_surprise

__all__ = [
    "LEVEL",
    "LONGEST",
    "BurstDetector",
    "BurstParams",
    "FailureRateModel",
    "Incident",
    "MinuteEntry",
    "ScopeState",
    "Window",
    "binomial_surprise",
    "rhythm_bucket",
    "scope_id",
    "scope_type",
]


# Version of `BurstDetector.snapshot`'s layout: a worker refuses a snapshot of another version
# and rebuilds from the signals instead.
SNAPSHOT_VERSION = 1


# Fade factors of merchants' volumes for ages up to a day, computed once (`_make_room_for_merchants`
# reads one per tracked merchant each minute the table is full); the same floats as `fade ** age`.
FADE_POWERS = 1441


# Scopes rebuilt between two steps of `BurstDetector.restore_steps` (1-2 ms of a takeover's
# event loop, one rhythm bucket learned a scope or all 12), and merchants' volumes (0.4 ms:
# each a few percent of a scope's work).
RESTORE_SCOPES = 100
RESTORE_MERCHANTS = 1000


@lru_cache(maxsize=4)
def _fade_powers(fade: float) -> tuple[float, ...]:
    return tuple(fade**age for age in range(FADE_POWERS))


def _scope_states(scopes: dict[str, ScopeState]) -> Iterator[dict[str, Any]]:
    # (A generator function, built entry by entry as it is read, compiled or not: `snapshot`.)
    for st in scopes.values():
        yield st.to_state()


def _merchant_rows(volume: dict[str, tuple[float, int, bool]]) -> Iterator[list[Any]]:
    for k, (v, last, own) in volume.items():
        yield [k, v, last, own]


@dataclass(frozen=True, slots=True)
class BurstParams:
    """Detector parameters. One threshold for every scope (see README, "Failure bursts")."""

    threshold: float = 7.0  # open an incident at this surprise (-log10 p)
    calm_below: float = 3.0  # a minute is calm when the short windows score below this ...
    # ... unless the 3-minute window still holds more than this many times the expected bad
    # payments plus one *and* a bad share of at least `calm_incident_share` of the incident's
    # own: still failing as in the incident, merely too few payments to be surprising (README,
    # "Resolution"). Either alone would keep incidents open over a normal a little above the
    # learned one, or over a small residue of a large outage.
    calm_max_ratio: float = 3.0
    calm_incident_share: float = 0.1
    # A calm minute counts towards resolution only when its 3-minute window shows the incident's
    # failure stopped: so few bad payments score at least this (-log10 P) against the
    # incident's own bad share. Fewer payments than that can tell (one of one, failed or not)
    # are no evidence either way, like a minute without payments (0 = off).
    calm_min_evidence: float = 2.0
    calm_minutes_to_resolve: int = 3
    # A scope failing again within `flap_window_minutes` of its last incident's resolution is
    # flapping: its incident resolves after `calm_minutes_to_resolve_flapping` calm minutes, so
    # a switch down 3 minutes in every 9 is one page for the episode, not one per cycle.
    flap_window_minutes: int = 30
    calm_minutes_to_resolve_flapping: int = 15
    update_every_minutes: int = 5  # at most one `updated` per this many minutes ...
    update_growth: float = 1.25  # ... and only when affected payments grew by this factor,
    # or this many minutes after the last report when any more failed: growth by a factor makes
    # updates ever rarer, and a days-long outage would go a day and more without one (0 =
    # growth only).
    update_max_minutes: int = 240
    windows_minutes: tuple[int, ...] = (1, 3, LONGEST)
    fading_factor: float = 0.002  # per active minute: a memory of about 500 minutes
    prior_payments: float = 400.0  # a young scope leans on its parent until it saw this many
    prior_rate: float = 0.01  # the rate assumed for the root before anything is learned
    min_rate: float = 0.001  # expected rates never go below this
    merchant_own_model_per_min: float = 2.0  # a merchant gets its own scope from this volume
    merchant_pool_below_per_min: float = 1.0  # ... and goes back to its MCC pool below this
    explain_share: float = 0.7  # share of excess (or of bad payments) that counts as explained
    # Between two scopes of one level (a switch, an acquirer), the one whose bad payments lie
    # inside the other's by at least this much more than the other's inside it is the part,
    # the other the cause; closer than that, the higher bad share decides.
    contain_margin: float = 0.1
    # A narrower scope explains a broader one only when it holds the broader one's bad
    # payments beyond its share of the payments by this surprise (`_concentrated`; 0 = off).
    explain_min_surprise: float = 2.0
    idle_expiry_minutes: int = 7 * 1440  # scopes unseen this long are forgotten
    top_children: int = 5
    # Cold start: a scope opens no incident until its own baseline has this many payments and
    # active minutes behind it, or its parent's has (README, "Cold start"). 0 and 0 = off.
    learn_min_payments: int = 2000
    learn_min_minutes: int = 10
    # Bounds on what distinct ids can make the detector keep (README, "Scope bound"). Merchants
    # whose volume is followed: ten times the merchant scopes, room for the candidates around
    # the scopes' thresholds; past it the least busy make room (`_make_room_for_merchants`).
    max_scopes_per_type: int = 1000
    max_merchants_tracked: int = 10_000

    def __reduce__(self) -> tuple[type[BurstParams], tuple[Any, ...]]:
        # Rebuilt by its constructor when pickled: see `partition.Params.__reduce__`.
        return BurstParams, tuple(getattr(self, f.name) for f in dataclass_fields(self))

    def __post_init__(self) -> None:
        if max(self.windows_minutes) != LONGEST:
            raise ValueError(f"the longest window must be {LONGEST} minutes")


class BurstDetector:
    """Combines the partitions' closed minutes and turns them into incidents.

    Feed it every `signals` decision of every partition (in each partition's order, any
    interleaving, repeats allowed) with `on_signals`; it returns `FAILURE_BURST` alerts.
    `partitions` are the input partitions (a count means 0..count-1): a minute is complete once
    all of them have closed it.
    """

    def __init__(self, partitions: int | Iterable[int], params: BurstParams | None = None) -> None:
        self.merge = PartitionMerge(partitions)
        self.params = params or BurstParams()
        self.scopes: dict[str, ScopeState] = {}
        self.incidents = IncidentBook()
        # Merchants' volume per minute (EW, updated lazily) and whether each has its own scope.
        self.merchant_volume: dict[str, tuple[float, int, bool]] = {}
        # Per scope type, the last minute new scopes found no place (`_bound_scopes`).
        self.scope_limit_minute: dict[str, int] = {}
        self.stats = {
            "minutes": 0,
            "scope_minutes": 0,
            "incidents": 0,
            "bursts_while_learning": 0,
            "scope_minutes_untracked": 0,
            "merchant_minutes_untracked": 0,
        }
        self._last_expiry_minute = 0
        self._floors: dict[str, int] = {}  # (this minute's, see `close_minute`)
        # The last minute of the history a warm-up (`qris-guard warmup`) fed this state, kept
        # through every snapshot after it: what it learned came from records the input topics
        # need not hold, so a replay of those topics starts colder and can open other incidents
        # (`livesettings.warmed_detector_warning` says so). None: learned from the signals only.
        self.warmed_through: int | None = None

    @property
    def partitions(self) -> frozenset[int]:
        return self.merge.partitions

    @property
    def closed_through(self) -> int | None:
        """The last complete minute, once every partition has reported."""
        return self.merge.closed_through

    @property
    def pending(self) -> dict[int, dict[str, dict[str, Any]]]:
        """Minutes some partitions have closed and others not yet."""
        return self.merge.pending

    # -- snapshots ------------------------------------------------------------------------

    def snapshot(self, lazily: bool = False) -> dict[str, Any]:
        """The detector's whole state as JSON-ready named fields, versioned: `restore` rebuilds
        a detector whose next decisions are the same as this one's. JSON, not pickle: a snapshot
        is read back from a topic, and reading it must not be able to run code.

        `lazily`: the scopes and merchants as iterators that build each entry when it is read,
        so that a snapshot can be encoded in pieces (`burstsnapshot.encode_pieces`; at the scope
        bound building them all took 0.4 s). The detector must not change until they are read.
        They come from generator functions, not generator expressions: a compiled build (mypyc)
        makes a generator expression a list, every entry built before the first piece."""
        scopes = _scope_states(self.scopes)
        merchants = _merchant_rows(self.merchant_volume)
        return {
            "snapshot_version": SNAPSHOT_VERSION,
            "merge": self.merge.to_state(),
            "scopes": scopes if lazily else list(scopes),
            "incidents": self.incidents.to_state(),
            "merchant_volume": merchants if lazily else list(merchants),
            "stats": dict(self.stats),
            "last_expiry_minute": self._last_expiry_minute,
            "scope_limit_minute": sorted(self.scope_limit_minute.items()),
            **({} if self.warmed_through is None else {"warmed_through": self.warmed_through}),
        }

    @classmethod
    def restore(cls, snapshot: dict[str, Any], params: BurstParams | None = None) -> BurstDetector:
        """The detector saved by `snapshot` (parameters are today's, the learned state is the
        snapshot's). Raises `ValueError` for a snapshot of another version."""
        return run_to_end(cls.restore_steps(snapshot, params))

    @classmethod
    def restore_steps(
        cls, snapshot: dict[str, Any], params: BurstParams | None = None
    ) -> Generator[None, None, BurstDetector]:
        """`restore` in steps of `RESTORE_SCOPES` scopes or `RESTORE_MERCHANTS` merchants' volumes
        (the generator's value, once it stops, is the detector), so that a takeover can give the
        event loop back between them: at the scope bound the rebuild takes 50-90 ms of CPU at once. The
        detector is the caller's only when whole.

        >>> det = BurstDetector(1)
        >>> back = run_to_end(BurstDetector.restore_steps(det.snapshot()))
        >>> back.snapshot() == det.snapshot()
        True
        """
        version = snapshot.get("snapshot_version")
        if version != SNAPSHOT_VERSION:
            raise ValueError(f"burst detector snapshot version {version!r}, this worker reads {SNAPSHOT_VERSION}")
        merge = PartitionMerge.from_state(snapshot["merge"])
        det = cls(merge.partitions, params)
        det.merge = merge
        scopes = det.scopes
        for i, fields in enumerate(snapshot["scopes"], 1):
            st = ScopeState.from_state(fields)
            scopes[st.key] = st
            if i % RESTORE_SCOPES == 0:
                yield
        det.incidents = IncidentBook.from_state(snapshot["incidents"])
        volume = det.merchant_volume
        for i, (k, v, last, own) in enumerate(snapshot["merchant_volume"], 1):
            volume[k] = (float(v), int(last), bool(own))
            if i % RESTORE_MERCHANTS == 0:
                yield
        det.stats.update({k: int(v) for k, v in snapshot["stats"].items()})
        det._last_expiry_minute = int(snapshot["last_expiry_minute"])
        det.scope_limit_minute = {t: int(m) for t, m in snapshot["scope_limit_minute"]}
        warmed = snapshot.get("warmed_through")  # (absent from snapshots of a detector never warmed)
        det.warmed_through = None if warmed is None else int(warmed)
        return det

    # -- input ----------------------------------------------------------------------------

    def on_signals(self, value: dict[str, Any]) -> list[Decision]:
        """Take one partition's report; return the alerts of the minutes it completes. A hold
        report on the same topic is the tally's (`holdtally`), not the detector's: ignored."""
        if is_hold_report(value):
            return []
        out: list[Decision] = []
        for minute, data in self.merge.take(value):
            out.extend(self.close_minute(minute, data))
        return out

    # -- one complete minute --------------------------------------------------------------

    def close_minute(self, minute: int, data: dict[str, dict[str, Any]]) -> list[Decision]:
        """Score, attribute, learn and update incidents for one complete minute."""
        prm = self.params
        self.stats["minutes"] += 1
        data = self._pool_small_merchants(minute, data)
        data, out = self._bound_scopes(minute, data)
        longest = max(prm.windows_minutes)
        short = [w for w in prm.windows_minutes if w < longest] or [longest]
        end = minute + 1
        rates: dict[str, float] = {}
        scored: dict[str, ScoredScope] = {}
        learning: set[str] = set()  # scopes whose baseline is still being learned
        windows = prm.windows_minutes
        # Each scope's `covered_through` as the minute began: a scope's minutes up to it are
        # not listed as another incident's children (`_children_at`), whatever this minute's
        # attribution makes of it.
        floors = self._floors = {}
        for key in sorted(data, key=lambda k: (LEVEL[scope_type(k)], k)):
            sm = data[key]
            st = self._scope(key, sm, minute)
            ring = st.ring
            ring.append((minute, sm["c"], sm.get("w") or None, sm.get("k") or None, sm.get("s") or None))
            # The ring keeps the last `longest` minutes also before `covered_through` (windows
            # start after it): where failures lie in them is evidence for attribution
            # (`_concentrated`), whatever incident they were reported in.
            oldest = end - longest
            while ring[0][0] < oldest:
                del ring[0]
                if not ring:
                    break
            floors[key] = st.covered_through
            st.last_seen_minute = minute
            if not self.may_open(st):
                learning.add(key)
            parent_rate = rates.get(st.parent) if st.parent is not None else None
            if st.parent is not None and parent_rate is None:
                parent = self.scopes.get(st.parent)
                parent_rate = parent.model.expected_rate(minute) if parent is not None else None
            rate = rates[key] = st.model.expected_rate(minute, parent_rate)
            # Payments and bad payments of each window, newest minute first.
            sums = [[0, 0] for _ in windows]
            for entry in ring:
                if entry[0] <= st.covered_through:
                    continue
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
            above_normal = recent_bad > prm.calm_max_ratio * recent_n * rate + 1
            minute_score = binomial_surprise(sm["c"][BAD], sm["c"][0], rate)
            scored[key] = ScoredScope(
                st,
                sm["c"],
                best_score,
                calm_score,
                minute_score,
                best_minutes,
                rate,
                recent_rate,
                above_normal,
                (recent_n, recent_bad),
            )
            self.stats["scope_minutes"] += 1
            if key in learning and best_score >= prm.threshold:
                self.stats["bursts_while_learning"] += 1
        out.extend(self._incidents(minute, scored, learning))
        open_keys = self.incidents.open_scopes()
        for key, sc in scored.items():
            st = self.scopes[key]
            # While its baseline is being learned a scope learns every minute: nothing yet tells
            # an unusual minute from its normal, and skipping the surprising ones would pin a
            # wrong prior (a bank whose normal is 3% would never leave the prior's 1%).
            if key in learning or (not self.incidents.is_open(key) and sc.score < prm.calm_below):
                payments, bad = sc.minute_counts[0], sc.minute_counts[BAD]
                if open_keys and key not in learning:
                    # Failures inside a narrower scope's open incident are that incident's, not
                    # this scope's normal. Explained by it, they score calm here, and learned
                    # over a days-long outage they would raise the bank-wide expected rate
                    # several times over, against which a later bank-wide failure would be
                    # judged. They are left out with their payments.
                    explained = self._explained_bad(key, data, open_keys)
                    payments, bad = payments - explained, bad - explained
                st.model.learn_one({"minute": minute, "payments": payments, "bad": bad})
        if minute - self._last_expiry_minute >= 60:
            self._expire(minute)
        return out

    def learned(self, st: ScopeState) -> bool:
        """Whether the scope's own baseline is learned: enough payments and enough active
        minutes of history (`BurstParams.learn_min_payments`, `learn_min_minutes`)."""
        prm = self.params
        return st.model.payments_seen >= prm.learn_min_payments and st.model.minutes_seen >= prm.learn_min_minutes

    def may_open(self, st: ScopeState) -> bool:
        """Whether the scope may open an incident: its baseline is learned, or it borrows its
        parent's and the parent's is learned (a new merchant under a known acquirer)."""
        if self.learned(st):
            return True
        parent = self.scopes.get(st.parent) if st.parent is not None else None
        return parent is not None and self.learned(parent)

    def _scope(self, key: str, sm: dict[str, Any], minute: int) -> ScopeState:
        st = self.scopes.get(key)
        if st is None:
            t = scope_type(key)
            if t == "all":
                parent = None
            elif t == "merchant" and "a" in sm and sm["a"][1] and not scope_id(key).startswith("MCC-"):
                # (a merchant's own id never starts with `MCC-`: `merchant_scope_id`)
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
        admitted = self._make_room_for_merchants(minute, data, alpha)
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
            elif own and volume < prm.merchant_pool_below_per_min and not self.incidents.is_open(key):
                own = False
            if not own:
                target = "merchant:" + pool_id(sm.get("a", ["", "", ""])[0])
            volume = volume * (1.0 - alpha) + alpha * sm["c"][0]
            # A new merchant that found no place is not tracked: it stays in its MCC pool.
            if key in self.merchant_volume or admitted is None or key in admitted:
                self.merchant_volume[key] = (volume, minute + 1, own)
            else:
                self.stats["merchant_minutes_untracked"] += 1
            into = out.get(target)
            if into is None:
                into = out[target] = scope_minute_view(sm)
            else:
                merge_scope_minute(into, sm)
            if target != key:
                into.pop("a", None)  # a pool has no single merchant's attributes
        return out

    def _make_room_for_merchants(self, minute: int, data: dict[str, dict[str, Any]], alpha: float) -> set[str] | None:
        """The new merchants of this minute that get a place in `merchant_volume` (None: all).

        The table holds at most `max_merchants_tracked` merchants, whatever the number of
        distinct ids: its entries are most of a snapshot's bytes when ids are random. When this
        minute's new merchants do not fit, each takes, busiest first, the place of the merchant
        with the least volume among those without a scope of their own and not in this minute,
        if that volume is below what the newcomer's will be: the table keeps the busiest
        merchants, so ids seen once make room for each other, and a merchant becoming busy gets
        a place during a flood of them (refused, it would stay pooled until they faded).
        Deterministic: it depends on the minutes' contents only."""
        free = self.params.max_merchants_tracked - len(self.merchant_volume)
        if len(data) <= free:  # (room for every scope of the minute: nearly always)
            return None
        new = [k for k in data if k.startswith("merchant:") and k not in self.merchant_volume]
        if len(new) <= free:
            return None
        fade = 1.0 - alpha
        powers = _fade_powers(fade)
        after = minute + 1
        # Volumes as they stand after this minute, without payments in it; only the cheapest
        # that can be taken are sorted (the table is full all day on a feed of tens of thousands
        # of merchants: sorting it whole every minute cost 14% of such a day's replay).
        idle = heapq.nsmallest(
            len(new) + max(0, -free),
            (
                (v * (powers[age] if 0 <= (age := after - last) < FADE_POWERS else fade ** max(0, age)), k)
                for k, (v, last, own) in self.merchant_volume.items()
                if not own and k not in data
            ),
        )
        cheapest = iter(idle)
        # Over the bound (restored from a worker whose bound was higher): back to it first.
        for _ in range(-free):
            _volume, out_key = next(cheapest, (math.inf, ""))
            if out_key:
                del self.merchant_volume[out_key]
        places = max(free, 0)
        admitted: set[str] = set()
        for key in sorted(new, key=lambda k: (-data[k]["c"][0], k)):
            if places:
                places -= 1
            else:
                volume, out_key = next(cheapest, (math.inf, ""))
                # (Newcomers busiest first, places cheapest first: once one does not make room
                # for a newcomer, none makes room for the rest.)
                if volume >= alpha * data[key]["c"][0]:
                    break
                del self.merchant_volume[out_key]
            admitted.add(key)
        return admitted

    def _bound_scopes(
        self, minute: int, data: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, dict[str, Any]], list[Decision]]:
        """At most `max_scopes_per_type` scopes of each type are tracked (issue 8: random ids
        must not grow memory without bound). A new scope takes a free place, else the place of
        the least recently seen scope of its type still learning its baseline (no incident);
        learned scopes keep theirs. New scopes that find no place, the least busy first, are
        not tracked this minute: their payments count only in the broader scopes (`all`, the
        switch, ...). Deterministic: it depends on the minutes' contents only."""
        cap = self.params.max_scopes_per_type
        new: dict[str, list[str]] = {}
        for key in data:
            if key not in self.scopes and key != "all":
                new.setdefault(scope_type(key), []).append(key)
        if not new:
            return data, []
        tracked: dict[str, int] = {}
        for key in self.scopes:
            t = scope_type(key)
            tracked[t] = tracked.get(t, 0) + 1
        untracked: dict[str, list[str]] = {}
        hit: dict[str, tuple[int, int]] = {}  # type -> (new scopes, scopes they replaced)
        for t, keys in sorted(new.items()):
            free = cap - tracked.get(t, 0)
            if len(keys) <= free:
                continue
            idle_young = sorted(
                (st.last_seen_minute, k)
                for k, st in self.scopes.items()
                if scope_type(k) == t and k not in data and not self.incidents.is_open(k) and not self.learned(st)
            )
            replaced = idle_young[: len(keys) - max(free, 0)]
            for _seen, k in replaced:
                del self.scopes[k]
            free += len(replaced)
            hit[t] = (len(keys), len(replaced))
            if len(keys) > free:
                busiest = sorted(keys, key=lambda k: (-data[k]["c"][0], k))
                untracked[t] = busiest[max(free, 0) :]
        if not hit:
            return data, []
        dropped = {k for keys in untracked.values() for k in keys}
        self.stats["scope_minutes_untracked"] += len(dropped)
        alerts = []
        for t, (n_new, n_replaced) in sorted(hit.items()):
            last = self.scope_limit_minute.get(t)
            # One alert when the bound is hit, again only after a day without hitting it.
            if last is None or minute - last > 1440:
                alerts.append(scope_limit_alert(t, cap, n_new, n_replaced, len(untracked.get(t, ())), minute))
            self.scope_limit_minute[t] = minute
        return {k: v for k, v in data.items() if k not in dropped}, alerts

    def _expire(self, minute: int) -> None:
        self._last_expiry_minute = minute
        horizon = minute - self.params.idle_expiry_minutes
        prm = self.params
        if len(self.merchant_volume) > prm.max_merchants_tracked // 2:
            # Near the bound, merchants whose volume has faded to nothing make room (a merchant
            # with its own scope keeps its entry until it is pooled again).
            alpha = prm.fading_factor * 10
            for key in [
                k
                for k, (v, last, own) in self.merchant_volume.items()
                if not own and v * (1.0 - alpha) ** max(0, minute - last) < 0.01
            ]:
                del self.merchant_volume[key]
        for key in [
            k for k, st in self.scopes.items() if st.last_seen_minute < horizon and not self.incidents.is_open(k)
        ]:
            del self.scopes[key]
        for key in [k for k, (_v, last, _o) in self.merchant_volume.items() if last < horizon]:
            del self.merchant_volume[key]

    # -- attribution and incidents ---------------------------------------------------------

    def _explained_bad(self, key: str, data: dict[str, dict[str, Any]], open_keys: list[str]) -> int:
        """Bad payments of scope `key` in this minute's `data` that lie in the open incident of a
        narrower scope (at most its bad payments): `all` shares every scope's own; an issuer
        records those it shares with a switch or an acquirer (`w`), and a merchant (or pool)
        those it shares with its issuer, switch and acquirer. Overlapping incidents are added
        up, to the cap. A scope of the incident's level or narrower (an acquirer beside a
        switch, a merchant) keeps learning them: the incident's scope does not explain those
        (`_incidents`), so left out of their normal they would open incidents of their own."""
        sm = data[key]
        bad = int(sm["c"][BAD])
        if not bad:
            return 0
        level = LEVEL[scope_type(key)]
        narrower = [o for o in open_keys if LEVEL[scope_type(o)] > level]
        if not narrower:
            return 0
        if key == "all":
            explained = sum(int(data[o]["c"][BAD]) for o in narrower if o in data)
        else:
            shared = sm.get("w") or {}
            explained = 0
            for o in narrower:
                if o in shared:
                    explained += int(shared[o])
                elif scope_type(o) == "merchant" and o in data:
                    # (the broader scopes do not record merchants; a merchant records them)
                    explained += int((data[o].get("w") or {}).get(key, 0))
        return min(explained, bad)

    def _overlap(self, a: ScoredScope, b_key: str) -> int:
        """Bad payments (long window) in both scope `a` and scope `b_key`."""
        if b_key == "all":
            return a.long.counts[BAD]
        return a.long.shared.get(b_key, 0)

    def _shared(self, scored: dict[str, ScoredScope], a: str, b: str, minute: int | None = None) -> int:
        if a == "all" or b == "all":
            other = b if a == "all" else a
            if other in scored:
                return scored[other].long.counts[BAD]
            st = self.scopes.get(other)
            if minute is None or st is None:
                return 0
            # A scope without payments this minute: its own window up to this minute.
            return st.window(minute + 1, LONGEST).counts[BAD]
        if a in scored and b in scored[a].long.shared:
            return self._overlap(scored[a], b)
        if b in scored:
            return self._overlap(scored[b], a)
        return 0

    def _shared_in_window(self, c: str, s: str, minute: int) -> int:
        """Bad payments of scope `s` that lie in scope `c`, over `s`'s own window (its last
        `LONGEST` minutes after its `covered_through`), the window its excess is measured over.
        (Over `c`'s window, which an open incident never restarts, a merchant pool's ten minutes
        of failures explained one restarted minute of its switch's excess, every minute: a burst
        of a few dozen failed payments a minute in one pool kept the switch's far larger outage
        from ever opening, and its refunds were paid, then clawed back.)"""
        cs, ss = self.scopes.get(c), self.scopes.get(s)
        if cs is None or ss is None:
            return 0
        return self._in_ring(cs, s, max(minute + 1 - LONGEST, ss.covered_through + 1), minute)

    @staticmethod
    def _in_ring(cs: ScopeState, s: str, first: int, last: int) -> int:
        """Bad payments of scope `s` in narrower scope `cs`'s ring minutes `first`..`last`."""
        if s == "all":
            return sum(e[1][BAD] for e in cs.ring if first <= e[0] <= last)
        return sum((e[2] or {}).get(s, 0) for e in cs.ring if first <= e[0] <= last)

    def _concentrated(
        self,
        c: str,
        s: str,
        minute: int,
        beside: Sequence[str] = (),
        set_apart: dict[tuple[str, str], tuple[int, int]] | None = None,
    ) -> bool:
        """Whether the bad payments of broader scope `s` lie in narrower scope `c` beyond what
        `c`'s share of the payments gives by chance: over the last `LONGEST` minutes (restarted
        windows or not), `c`'s count of `s`'s bad payments scores at least
        `explain_min_surprise` against Binomial(`s`'s bad, `c`'s share of all payments).

        Holding 70% of the excess is not enough at a few bad payments a minute: a scope with
        37% of the payments holds 70% of a bank-wide failure's 14 bad payments one time in 30,
        and each minute it explains restarts the broader scope's window, so the bank-wide
        failure would page as its parts. A switch outage's failures lie in the switch beyond
        any chance (17 of 17 where 38% of the payments go scores 7.1). `c`'s share of `s`'s own
        payments is not counted; its share of all payments is the same for `all` and a bank's
        own issuer. A scope carrying every payment is `s`'s population itself and explains.

        `beside`: open incidents of `c`'s type (so disjoint from it), whose payments and bad
        payments of `s` are set apart first: a second switch failing beside one already open
        holds the failures the first does not explain, whatever the first's share. `set_apart`
        caches their sums per (`c`'s type, `s`) for one minute: `beside` is the same list for
        every scope of a type that is not open itself, and summing it for each pair cost a
        hostile minute's open incidents cubed."""
        threshold = self.params.explain_min_surprise
        if threshold <= 0:
            return True
        first = minute + 1 - LONGEST
        root, cs, ss = self.scopes.get("all"), self.scopes.get(c), self.scopes.get(s)
        if root is None or cs is None or ss is None:
            return True
        payments = sum(e[1][0] for e in root.ring if first <= e[0] <= minute)
        in_c = sum(e[1][0] for e in cs.ring if first <= e[0] <= minute)
        bad = sum(e[1][BAD] for e in ss.ring if first <= e[0] <= minute)
        shared = self._in_ring(cs, s, first, minute)
        cache_key = (scope_type(c), s)
        apart = None if set_apart is None else set_apart.get(cache_key)
        if apart is None:
            apart_payments = apart_bad = 0
            for o in beside:
                os_ = self.scopes.get(o)
                if os_ is not None:
                    apart_payments += sum(e[1][0] for e in os_.ring if first <= e[0] <= minute)
                    apart_bad += self._in_ring(os_, s, first, minute)
            apart = (apart_payments, apart_bad)
            if set_apart is not None:
                set_apart[cache_key] = apart
        payments -= apart[0]
        bad -= apart[1]
        if in_c >= payments or bad <= 0:
            return True
        # (`c`'s minutes can hold more of `s`'s bad payments than `s`'s ring: `s` not tracked in
        # a minute (`_bound_scopes`), or a snapshot whose rings stop at `covered_through`. All of
        # them lie in `c` then; more than `bad` would be outside the binomial's domain.)
        return binomial_surprise(min(shared, bad), bad, in_c / payments) >= threshold

    def _incidents(self, minute: int, scored: dict[str, ScoredScope], learning: set[str]) -> list[Decision]:
        prm = self.params
        share = prm.explain_share
        # A scope still learning its baseline neither opens nor explains away another scope.
        bursting = sorted(k for k, sc in scored.items() if sc.score >= prm.threshold and k not in learning)
        # 1. A scope is explained by a narrower bursting scope that covers most of its excess
        #    (a busy merchant's failure explains its acquirer, its switch and `all`); between
        #    scopes of one level (a switch and an acquirer), by the one with the higher share of
        #    bad payments: the cause is concentrated, the other scope dilutes it.
        #    Unless the bad payments say otherwise: an outage of switch RINTIS makes each of its
        #    acquirers' failures lie all inside RINTIS, and RINTIS's spread over its acquirers,
        #    while in its first minute an acquirer's share can be a hair above the switch's
        #    (0.231 against 0.225): the one containing the other's failures is the cause, and
        #    the acquirer no longer opens an incident of its own beside the switch's.
        #    A narrower scope with an open incident explains too, also in a minute without
        #    payments of its own (at a switch's few payments a minute such minutes are common
        #    in a long outage; its bad payments are still in the broader scope's window).
        open_keys = set(self.incidents.open_scopes())
        explainers = sorted(set(bursting) | open_keys)
        open_by_type: dict[str, list[str]] = {}
        for o in sorted(open_keys):
            open_by_type.setdefault(scope_type(o), []).append(o)
        set_apart: dict[tuple[str, str], tuple[int, int]] = {}
        #    Narrower scopes of one type are disjoint (a payment has one switch, one acquirer,
        #    one issuer), so together they explain the part they hold: two switches failing at
        #    once explain `all` though neither holds 70% of its excess. Not merchants: a switch
        #    outage's busy merchants would explain their switch and page one by one.
        suppressed: set[str] = set()
        # Explained only because what lies outside its explainers is no burst of its own
        # (`_calm_without`): its windows are not restarted, so what lies outside keeps adding
        # up. (Restarted each minute, the rest was judged one minute at a time: a switch failing
        # 8 payments a minute beside a merchant pool's open incident never opened.)
        unrestarted: set[str] = set()
        for s in bursting:
            es = scored[s].excess
            if es <= 0:
                continue
            ls = LEVEL[scope_type(s)]
            together: dict[str, list[tuple[str, int]]] = {}
            for c in explainers:
                if c == s:
                    continue
                lc = LEVEL[scope_type(c)]
                if lc < ls:
                    continue
                if lc == ls and (c not in scored or not self._is_cause(c, scored[c], s, scored[s])):
                    continue
                n = self._shared_in_window(c, s, minute)
                # (An open incident's cause is established: in a long outage's nights its few
                # failures lie in it no more than chance gives, and it still explains them.)
                # (`c` not open itself: every open incident of its type is beside it.)
                if n <= 0 or not (
                    lc == ls
                    or c in open_keys
                    or self._concentrated(c, s, minute, open_by_type.get(scope_type(c), ()), set_apart)
                ):
                    continue
                if n >= share * es:
                    suppressed.add(s)
                    break
                if scope_type(c) != "merchant" and self._calm_without(s, scored[s], [c]):
                    suppressed.add(s)
                    unrestarted.add(s)
                    break
                if lc > ls and scope_type(c) != "merchant":
                    together.setdefault(scope_type(c), []).append((c, n))
            else:
                for group in together.values():
                    if sum(n for _c, n in group) >= share * es:
                        suppressed.add(s)
                        break
                    if self._calm_without(s, scored[s], [c for c, _n in group]):
                        suppressed.add(s)
                        unrestarted.add(s)
                        break
        # 2. Scopes that remain, and scopes with an open incident, are reported; a remaining
        #    scope whose excess mostly lies inside a broader reported one is folded into it.
        heads = sorted((set(bursting) - suppressed) | open_keys, key=lambda k: (LEVEL[scope_type(k)], k))
        folded: dict[str, str] = {}
        for c in heads:
            if c in open_keys or c not in scored:
                continue
            sc_c = scored[c]
            own = sc_c.excess if sc_c.excess > 0 else sc_c.long.counts[BAD]
            if own <= 0:
                continue
            # Broader reported scopes of one type are disjoint (a payment has one switch, one
            # acquirer, one issuer): together they explain the part of `c` they share, so a
            # merchant pool whose failures lie in two failing switches (neither holding 70% of
            # them) is folded too, into the one holding most, and the two outages page twice,
            # not once per pool. Merchants only: a switch folded into two issuers' incidents
            # would never page, and its payments from a third issuer would be covered by no
            # incident (their refunds paid, then clawed back when the switch recovers).
            by_type: dict[str, list[tuple[int, str]]] = {}
            summed = scope_type(c) == "merchant"
            for s in heads:
                if s == c or s in folded or LEVEL[scope_type(s)] > LEVEL[scope_type(c)]:
                    continue
                if LEVEL[scope_type(s)] == LEVEL[scope_type(c)] and s not in open_keys:
                    continue
                n = self._shared(scored, c, s)
                if n >= share * own:
                    folded[c] = s
                    break
                if n > 0 and summed and LEVEL[scope_type(s)] < LEVEL[scope_type(c)]:
                    by_type.setdefault(scope_type(s), []).append((n, s))
            else:
                for found in by_type.values():
                    if sum(n for n, _ in found) >= share * own:
                        folded[c] = max(found, key=lambda f: f[0])[1]  # (the first of a tie)
                        break
        # What is explained or folded belongs to this minute's incidents: its windows restart.
        for key in (suppressed - unrestarted | set(folded)) - open_keys:
            self.scopes[key].covered_through = minute
        out: list[Decision] = []
        for key in heads:
            st = self.scopes[key]
            sc = scored.get(key)
            if not self.incidents.is_open(key):
                if key in folded or sc is None or sc.score < prm.threshold:
                    continue
                out.append(self._open(st, sc, minute, scored))
            else:
                out.extend(self._follow(st, sc, minute, scored))
        return out

    def _calm_without(self, s: str, sc: ScoredScope, explainers: list[str]) -> bool:
        """Whether bursting scope `s`, its bad payments inside `explainers` set apart, scores
        under the threshold in every window: what lies outside them is its normal. (Few bad
        payments make the 70% rule a coin toss: 4 of an acquirer's 6 inside a failing switch,
        the other 2 its usual background, are not an incident of its own.)"""
        for w in self.params.windows_minutes:
            win = sc.window(w)
            last = win.end_minute - 1
            inside = 0
            for c in explainers:
                cs = self.scopes.get(c)
                if cs is not None:
                    inside += self._in_ring(cs, s, win.start_minute, last)
            rest = win.counts[BAD] - inside
            if binomial_surprise(rest, win.counts[0], sc.rate) >= self.params.threshold:
                return False
        return True

    def _is_cause(self, c_key: str, c: ScoredScope, s_key: str, s: ScoredScope) -> bool:
        """Of two bursting scopes of one level, whether `c` rather than `s` is where their
        shared failures come from: `s`'s bad payments lie inside `c` clearly more than `c`'s
        inside `s`, or, as close as that, `c` has the higher bad share. (Each share over the
        scope's own window: an explained scope's windows restart, so one count shared by
        both would set a fresh window against a full one.)"""
        bad_s, bad_c = s.long.counts[BAD], c.long.counts[BAD]
        if bad_s > 0 and bad_c > 0:
            s_in_c, c_in_s = self._overlap(s, c_key) / bad_s, self._overlap(c, s_key) / bad_c
            if abs(s_in_c - c_in_s) >= self.params.contain_margin:
                return s_in_c > c_in_s
        return c.recent_rate > s.recent_rate

    def _open(self, st: ScopeState, sc: ScoredScope, minute: int, scored: dict[str, ScoredScope]) -> Decision:
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
            codes=capped_codes(win.codes),
            samples=win.samples[:5],
            first_bad_ms=first_bad,
            reported_bad=win.counts[BAD],
            reported_minute=minute,
            opened_minute=minute,
        )
        prm = self.params
        # A later incident's window can start up to LONGEST - 1 minutes before the minute it
        # opens in: a resolution is forgotten only when no such window can be within the flap
        # window of it (else whether a scope is flapping would depend on another scope opening
        # in between).
        forget_before = minute - prm.flap_window_minutes - max(prm.windows_minutes)
        self.incidents.open(st.key, inc, forget_before=forget_before)
        self.stats["incidents"] += 1
        again = self.incidents.again_after(st.key, prm.flap_window_minutes)
        return incident_alert(st.key, inc, "opened", minute, sc.score, prm.top_children, again)

    def _children_at(self, key: str, scored: dict[str, ScoredScope], minute: int) -> dict[str, int]:
        """Bad payments in `minute` of the scopes inside `key`: narrower scopes, and for a switch
        its acquirers (for an acquirer its switches), which cut across it."""
        kind = scope_type(key)
        level = LEVEL[kind]
        found: dict[str, int] = {}
        for other in scored:
            other_kind = scope_type(other)
            if other == key or other_kind == kind or LEVEL[other_kind] < level or other_kind in ("all", "issuer"):
                continue
            floor = self._floors.get(other, -1)
            for m, c, w, _k, _s in self.scopes[other].ring:
                if m != minute or m <= floor:
                    continue
                n = c[BAD] if key == "all" else (w or {}).get(key, 0)
                if n:
                    found[other] = found.get(other, 0) + n
        return found

    def end_history(self) -> list[str]:
        """The end of a warm-up's history from a file, learned and not sent: its minutes that
        some partitions had not closed yet are closed with what they reported, and every
        incident still open is resolved at the last of them with no alert, as `_follow`
        resolves one. Those incidents were never on the alerts topic: one left open would reach
        it as `updated` and `resolved` with no `opened`, and hold refunds under an id nobody saw
        opened; a minute left pending would be closed by the live worker's first reports, hours
        later, and open an incident of the history then. Returns the scopes whose incidents
        ended. (From the signals topic the incidents are the live detector's own, sent as they
        opened, and go on.)"""
        merge = self.merge
        for minute in sorted(merge.pending):
            self.close_minute(minute, merge.pending.pop(minute))  # (its alerts: learning, not sent)
        last = max(
            [*merge.through.values(), *([] if merge.closed_through is None else [merge.closed_through])], default=None
        )
        if last is None:
            return []  # (nothing reported: no incident opened)
        merge.through = dict.fromkeys(merge.partitions, last)
        merge.closed_through = last
        ended = self.incidents.open_scopes()
        for key in ended:
            self.incidents.resolve(key, last)
            self.scopes[key].covered_through = last  # its minutes belong to that episode
        return ended

    def _follow(
        self, st: ScopeState, sc: ScoredScope | None, minute: int, scored: dict[str, ScoredScope]
    ) -> list[Decision]:
        inc = self.incidents.get(st.key)
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
            inc.codes = add_codes(inc.codes, ring_last[3])
        if ring_last[4] and len(inc.samples) < 5:
            inc.samples.extend(ring_last[4][: 5 - len(inc.samples)])
        if inc.first_bad_ms is None and ring_last[4]:
            inc.first_bad_ms = ring_last[4][0][0]
        if sc.minute_score >= prm.calm_below:
            inc.last_bad_minute = minute
        # (A low volume's 2 bad of 18 where 0.15 are expected scores under `calm_below`: in a
        # partial outage the incident resolved in such lulls, and its holds ended with it.)
        still_failing = sc.above_normal and sc.recent_rate >= prm.calm_incident_share * inc.counts[BAD] / max(
            inc.counts[0], 1
        )
        again = self.incidents.again_after(st.key, prm.flap_window_minutes)
        if sc.calm_score < prm.calm_below and not still_failing:
            # (At a night's 1-2 payments a minute of a switch failing 75%, one failed payment
            # of one, or one of four, scores calm and is not "still failing" either: the
            # incident resolved in such lulls mid-outage, and an issuer incident opened on the
            # failures that followed.)
            # The evidence is the 3-minute window's, or the calm streak's: a switch that failed 3%
            # of its payments needs about 150 good ones in a row to tell, which at a night's 10 a
            # minute no 3-minute window holds (it stayed open for good).
            inc.calm_payments += counts[0]
            inc.calm_good += counts[0] - counts[BAD]
            # The streak counts only while it is calm as a whole: at a night's 1-2 payments a
            # minute each minute of a switch failing 50% can score calm, and 15 bad payments of
            # 30 are evidence that a 75% failure eased, not that it stopped.
            recent_n, recent_bad = sc.recent_counts
            share = inc.counts[BAD] / max(inc.counts[0], 1)
            # A streak is tested at every calm minute of a long night, so it must say ten times
            # as much (7 good payments in a row at 40% succeeding happen in a night's few hundred).
            evidence = binomial_surprise(recent_n - recent_bad, recent_n, 1.0 - share)
            streak_bad = inc.calm_payments - inc.calm_good
            if binomial_surprise(streak_bad, inc.calm_payments, sc.rate) < prm.calm_below:
                evidence = max(evidence, binomial_surprise(inc.calm_good, inc.calm_payments, 1.0 - share) - 1.0)
            if evidence < prm.calm_min_evidence:
                return []
            inc.calm_minutes += 1
            needed = prm.calm_minutes_to_resolve if again is None else prm.calm_minutes_to_resolve_flapping
            if inc.calm_minutes >= needed:
                self.incidents.resolve(st.key, minute)
                st.covered_through = minute  # its minutes belong to this episode, not to the next
                return [incident_alert(st.key, inc, "resolved", minute, inc.peak_score, prm.top_children)]
            return []
        inc.calm_minutes = inc.calm_payments = inc.calm_good = 0
        since = minute - inc.reported_minute
        grown = since >= prm.update_every_minutes and inc.counts[BAD] >= prm.update_growth * max(inc.reported_bad, 1)
        stale = 0 < prm.update_max_minutes <= since and inc.counts[BAD] > inc.reported_bad
        if grown or stale:
            inc.reported_minute = minute
            inc.reported_bad = inc.counts[BAD]
            return [incident_alert(st.key, inc, "updated", minute, sc.score, prm.top_children, again)]
        return []
