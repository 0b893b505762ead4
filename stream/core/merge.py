"""The merge of the partitions' burst reports: each input partition reports the minutes it
closed (`signals`); a minute is complete once every partition has closed it. Reports merge in
any order and a repeated report is ignored, so the complete minutes depend only on each
partition's records. Imports nothing outside the core.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .signals import merge_scope_minute, scope_minute_view

# One complete minute: (epoch minute, scope key -> merged scope-minute).
CompleteMinute = tuple[int, dict[str, dict[str, Any]]]


class PartitionMerge:
    """Pending minutes of the partitions' reports until every partition has closed them.

    `partitions` are the input partitions (a count means 0..count-1).
    """

    def __init__(self, partitions: int | Iterable[int]) -> None:
        self.partitions = frozenset(range(partitions) if isinstance(partitions, int) else partitions)
        if not self.partitions:
            raise ValueError("a detector needs at least one partition")
        self.through: dict[int, int] = {}
        self.pending: dict[int, dict[str, dict[str, Any]]] = {}
        self.closed_through: int | None = None
        # The parts of a partition's report sent in parts (`signals.signals_decisions`) taken so
        # far: partition -> (its `through_minute`, part index -> its minutes).
        self.parts: dict[int, tuple[int, dict[int, list[dict[str, Any]]]]] = {}

    def take(self, value: dict[str, Any]) -> list[CompleteMinute]:
        """Take one partition's report; return the minutes it completes, oldest first."""
        p = int(value["partition"])
        if p not in self.partitions:
            raise ValueError(f"a report of partition {p}, not one of the input's {sorted(self.partitions)}")
        through = int(value["through_minute"])
        previous = self.through.get(p)
        if previous is not None and through <= previous:
            return []  # a repeat: already taken
        entries = value["minutes"]
        parts = int(value.get("parts", 1))
        if parts > 1:
            # A report in parts is taken once all its parts are here (repeats harmless); parts of
            # an earlier report never completed (its sender stopped half way) give way to a later
            # report, which covers their minutes again.
            got_through, got = self.parts.get(p, (through, {}))
            if got_through != through:
                got = {}
            got[int(value["part"])] = entries
            if len(got) < parts:
                self.parts[p] = (through, got)
                return []
            self.parts.pop(p, None)
            entries = [entry for i in range(parts) for entry in got[i]]
        elif p in self.parts and self.parts[p][0] <= through:
            del self.parts[p]
        for entry in entries:
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
        out = [(m, self.pending.pop(m)) for m in sorted(k for k in self.pending if k <= complete)]
        if self.closed_through is None or complete > self.closed_through:
            self.closed_through = complete
        return out

    def to_state(self) -> dict[str, Any]:
        """JSON-ready named fields (minutes and partitions as lists of pairs: JSON keys are text)."""
        return {
            "partitions": sorted(self.partitions),
            "through": sorted(self.through.items()),
            "pending": [[m, data] for m, data in sorted(self.pending.items())],
            "closed_through": self.closed_through,
            "parts": [[p, through, sorted(got.items())] for p, (through, got) in sorted(self.parts.items())],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PartitionMerge:
        merge = cls(state["partitions"])
        merge.through = {int(p): int(m) for p, m in state["through"]}
        merge.pending = {int(m): data for m, data in state["pending"]}
        ct = state["closed_through"]
        merge.closed_through = None if ct is None else int(ct)
        merge.parts = {  # (a snapshot from before reports in parts has none)
            int(p): (int(through), {int(i): minutes for i, minutes in got})
            for p, through, got in state.get("parts", [])
        }
        return merge
