"""Input records of the contract, as typed immutable values.

`PaymentEvent` is a `qris.payment-requests` value, `LedgerEvent` a `qris.ledger-debits` value.
Only the parser in `validation` builds them from bytes. Imports nothing outside the core.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from operator import itemgetter
from typing import Final, Literal, NamedTuple

PaymentType = Literal["requested", "settled", "failed"]
LedgerType = Literal["debited", "reversed"]

PAYMENT_TYPES: Final = frozenset({"requested", "settled", "failed"})
LEDGER_TYPES: Final = frozenset({"debited", "reversed"})
CURRENCY: Final = "IDR"
MAX_AMOUNT: Final = 10**12
# Where the fields both events start with sit in their tuple, for the paths run for every record:
# compiled by mypyc, `event[REFERENCE]` reads the tuple, where `event.reference` is a generic
# attribute look-up through the class (a named tuple is not a native class).
EVENT_ID: Final = 0
TYPE: Final = 1
REFERENCE: Final = 2
OCCURRED_AT_MS: Final = 4

# Optional string fields of a payment event, in the contract's order.
PAYMENT_OPTIONAL_FIELDS: Final = (
    "merchant_name",
    "mcc",
    "acquirer_id",
    "issuer_id",
    "switch_id",
    "terminal_id",
    "channel",
    "response_code",
)


class Stream(IntEnum):
    """The two input streams of a partition. The value is the contract's `stream` sort key:
    payment-requests before ledger-debits at the same effective time and kind."""

    P = 0
    L = 1


# Named tuples, not frozen dataclasses: just as immutable, and built 6x faster (a frozen
# dataclass sets each field through object.__setattr__; parsing built one or two per record).
class PaymentEvent(NamedTuple):
    event_id: str
    type: PaymentType
    reference: str
    occurred_at: str
    occurred_at_ms: int
    amount: int
    account_id: str | None = None
    merchant_id: str | None = None
    merchant_name: str | None = None
    mcc: str | None = None
    acquirer_id: str | None = None
    issuer_id: str | None = None
    switch_id: str | None = None
    terminal_id: str | None = None
    channel: str | None = None
    response_code: str | None = None

    # Ordered with None before any text. Only a replay file that repeats a stream's offset makes
    # two waiting records of one reference equal up to their events (the heap then compares the
    # events): a plain tuple comparison of None and text would raise there.
    def _order(self) -> tuple[tuple[int, object], ...]:
        return tuple((0, "") if v is None else (1, v) for v in self)

    def __lt__(self, other: tuple[object, ...]) -> bool:
        return self._order() < other._order() if isinstance(other, PaymentEvent) else NotImplemented

    def __le__(self, other: tuple[object, ...]) -> bool:
        return self._order() <= other._order() if isinstance(other, PaymentEvent) else NotImplemented

    def __gt__(self, other: tuple[object, ...]) -> bool:
        return self._order() > other._order() if isinstance(other, PaymentEvent) else NotImplemented

    def __ge__(self, other: tuple[object, ...]) -> bool:
        return self._order() >= other._order() if isinstance(other, PaymentEvent) else NotImplemented


class LedgerEvent(NamedTuple):
    event_id: str
    type: LedgerType
    reference: str
    occurred_at: str
    occurred_at_ms: int
    amount: int
    entry_id: str
    account_id: str


InputEvent = PaymentEvent | LedgerEvent


# The event's fields in declaration order, for saving (`PaymentEvent(*fields)` rebuilds it): a
# plain tuple sliced from the event in C, no Python frame, as it runs for every record still
# waiting each time its reference's state is saved. `x[:]` of a named tuple is one copy where
# `list(x)` iterates it, and orjson writes a plain tuple as the same array as a list (it writes
# no tuple subclass). Tested round trip: tests/test_validation_fast.py.
event_fields: Final[Callable[[InputEvent], tuple[object, ...]]] = itemgetter(slice(None))
