"""Scopes of the burst detector: `all`, issuer, switch, acquirer and merchant (or a merchant
pool), their keys (`type:id`), and each scope's state: its rate model and the ring of its last
minutes, summed into the windows that are scored. Imports nothing outside the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .ratemodel import FailureRateModel
from .signals import BAD

LEVEL = {"all": 0, "issuer": 1, "switch": 2, "acquirer": 2, "merchant": 3}
SCOPE_TYPES = ("all", "issuer", "switch", "acquirer", "merchant")
LONGEST = 10  # minutes: the longest window (BurstParams.windows_minutes must end with it)


def scope_type(key: str) -> str:
    """`merchant:ID1` -> `merchant`; `all` -> `all`."""
    return key.split(":", 1)[0]


def scope_id(key: str) -> str:
    """`merchant:ID1` -> `ID1`; `all` -> `all`."""
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
class ScopeState:
    key: str
    parent: str | None
    model: FailureRateModel
    ring: list[MinuteEntry] = field(default_factory=list)
    last_seen_minute: int = 0
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

    def to_state(self) -> dict[str, Any]:
        """The scope as JSON-ready named fields (`from_state` rebuilds it exactly)."""
        return {
            "key": self.key,
            "parent": self.parent,
            "model": self.model.to_state(),
            "ring": [list(entry) for entry in self.ring],
            "last_seen_minute": self.last_seen_minute,
            "covered_through": self.covered_through,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ScopeState:
        ring: list[MinuteEntry] = [(int(m), list(c), w, k, s) for m, c, w, k, s in state["ring"]]
        return cls(
            key=state["key"],
            parent=state["parent"],
            model=FailureRateModel.from_state(state["model"]),
            ring=ring,
            last_seen_minute=int(state["last_seen_minute"]),
            covered_through=int(state["covered_through"]),
        )


class ScoredScope:
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
        "above_normal",
        "recent_counts",
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
        above_normal: bool = False,
        recent_counts: tuple[int, int] = (0, 0),
    ) -> None:
        self.state = state
        self.minute_counts = minute_counts
        self.score = score
        self.calm_score = calm_score  # the short windows' best: calm below `calm_below`
        self.minute_score = minute_score  # the minute alone
        self.best_minutes = best_minutes
        self.rate = rate
        self.recent_rate = recent_rate  # bad share of the short windows, for attribution
        # More bad payments in the 3-minute window than `calm_max_ratio` times the expected plus one.
        self.above_normal = above_normal
        self.recent_counts = recent_counts  # (payments, bad) of the 3-minute window
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
