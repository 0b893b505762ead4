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
        # The parts of reports sent in parts (`signals.signals_decisions`) taken so far: partition
        # -> (`through_minute`, report digest, number of parts) -> part index -> its minutes.
        self.parts: dict[int, dict[tuple[int, str, int], dict[int, list[dict[str, Any]]]]] = {}

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
            # A report in parts is taken once all its parts are here, repeats harmless. Parts are
            # put together only with parts of the same report (its `through_minute`, digest and
            # number of parts): a report sent again by a sender that stopped half way, or another
            # sender's (a zombie's) at the same time, is a set of its own. Sets left incomplete
            # go when the partition's report of a later or the same minute is taken.
            sets = self.parts.setdefault(p, {})
            got = sets.setdefault((through, str(value.get("report", "")), parts), {})
            got[int(value["part"])] = entries
            if any(i not in got for i in range(parts)):
                return []
            entries = [entry for i in range(parts) for entry in got[i]]
        if p in self.parts:
            sets = self.parts[p]
            for k in [k for k in sets if k[0] <= through]:
                del sets[k]
            if not sets:
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

    def wait_for(self, partitions: Iterable[int]) -> None:
        """Complete minutes once `partitions` (some of this merge's) have closed them, the
        other partitions' reports and progress left out: a replay's detector restored from a
        snapshot waits, as a cold one does, only for the input partitions that report.

        >>> m = PartitionMerge(2)
        >>> m.wait_for([0])
        >>> report = {"partition": 0, "through_minute": 5, "minutes": [{"minute": 5, "scopes": {}}]}
        >>> [minute for minute, _ in m.take(report)]
        [5]
        """
        keep = frozenset(partitions)
        if not keep or not keep <= self.partitions:
            raise ValueError(f"partitions {sorted(keep)} are not some of {sorted(self.partitions)}")
        self.partitions = keep
        self.through = {p: m for p, m in self.through.items() if p in keep}
        self.parts = {p: sets for p, sets in self.parts.items() if p in keep}

    def to_state(self) -> dict[str, Any]:
        """JSON-ready named fields (minutes and partitions as lists of pairs: JSON keys are text)."""
        return {
            "partitions": sorted(self.partitions),
            "through": sorted(self.through.items()),
            "pending": [[m, data] for m, data in sorted(self.pending.items())],
            "closed_through": self.closed_through,
            "parts": [
                [p, through, report, n, sorted(got.items())]
                for p, sets in sorted(self.parts.items())
                for (through, report, n), got in sorted(sets.items())
            ],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PartitionMerge:
        merge = cls(state["partitions"])
        merge.through = {int(p): int(m) for p, m in state["through"]}
        merge.pending = {int(m): data for m, data in state["pending"]}
        ct = state["closed_through"]
        merge.closed_through = None if ct is None else int(ct)
        merge.parts = {}
        for p, through, report, n, got in state.get("parts", []):  # (none in a snapshot before them)
            sets = merge.parts.setdefault(int(p), {})
            sets[(int(through), str(report), int(n))] = {int(i): minutes for i, minutes in got}
        return merge
