"""The engine's observer hook: facts about each record and timer as the core handles them, for
`trace`, metrics and the lookup index. An observer only watches; it returns nothing and the
engine decides exactly the same with or without one. Imports nothing outside the core.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .decisions import Decision
from .records import LedgerEvent, PaymentEvent, Stream

if TYPE_CHECKING:
    from .reference import ReferenceState


class EngineObserver(Protocol):
    """What a `PartitionEngine` reports when `engine.observer` is set. `watermark_ms` is the
    partition's watermark at that moment (the one that released the item when processing)."""

    def taken(
        self,
        stream: Stream,
        offset: int,
        timestamp_ms: int | None,
        key: bytes | None,
        value: bytes | None,
        event: PaymentEvent | LedgerEvent | None,
        eff_ms: int | None,
        watermark_ms: int,
        rejection: str | None,
    ) -> None:
        """A record arrived: parsed (`event`, `eff_ms`) or rejected (`rejection`, a reason)."""

    def processed(
        self,
        stream: Stream,
        offset: int,
        eff_ms: int,
        watermark_ms: int,
        event: PaymentEvent | LedgerEvent,
        duplicate: bool,
        state: ReferenceState,
        decisions: list[Decision],
    ) -> None:
        """A record was applied to its reference (or ignored as a duplicate event_id)."""

    def deadline(
        self,
        reference: str,
        deadline_ms: int,
        watermark_ms: int,
        numbers: tuple[int, int, int],
        state: ReferenceState,
        decisions: list[Decision],
    ) -> None:
        """A cycle's deadline fired; `numbers` are (net, settled, active) just before it."""

    def dropped(self, reference: str, at_ms: int, watermark_ms: int, state: ReferenceState) -> None:
        """A reference's state (`state`, now gone from the engine) was dropped by retention (rule 4)."""
