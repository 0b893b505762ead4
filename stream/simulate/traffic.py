"""Issuer-side QRIS traffic in event time: payments arrive by the daily rhythm, each plays out
its lifecycle (requested, debited, settled or failed, maybe reversed) on the two input
topics, and records come out in the order their producers would have sent them. No clock,
no sleeping, no I/O: a seed, a start time and a scenario in, records out, byte-identical for
the same inputs. Writing them to a file or to Kafka is ``stream.simulate.output``'s job.
"""

import bisect
import heapq
import itertools
import math
import random
from collections.abc import Iterator
from statistics import NormalDist
from typing import Any, NamedTuple

import orjson

from stream.simulate.accounts import AccountPool
from stream.simulate.degradation import Degradation
from stream.simulate.malformed import MALFORMED_KINDS, corrupt
from stream.simulate.merchants import build_catalogue
from stream.simulate.partitioner import KeyPartitioner
from stream.simulate.rhythm import Rhythm
from stream.simulate.scenarios import Knobs, resolve_knobs
from stream.simulate.timestamps import WIB_OFFSET_MS, second_text, wib_date
from stream.simulate.truth import GroundTruth

PAYMENT_TOPIC = "qris.payment-requests"
LEDGER_TOPIC = "qris.ledger-debits"

_PAYMENTS, _LEDGER = 0, 1

# Outcomes of one payment; exactly one applies.
_SETTLE, _SETTLE_LATE, _FAIL_BEFORE_DEBIT, _FAIL_REVERSED, _FAIL_UNREVERSED = range(5)
_FAIL_LATE_REVERSAL, _STUCK = 5, 6

# Response codes, repeated by weight: before a debit the issuer declines; after it the
# switch or the acquirer side fails.
_CODES_BEFORE_DEBIT = ("51",) * 6 + ("05",) * 2 + ("61", "14")
_CODES_AFTER_DEBIT = ("68",) * 4 + ("91",) * 3 + ("96",) * 2 + ("05",)
# A degradation fails payments on the switch or issuer side: half before any debit (issuer
# or switch unavailable, timeout), the rest after it, 85% of those reversed by the ledger.
# The upper ends of a uniform draw's intervals: before debit, then debited and reversed.
_CODES_DEGRADED_BEFORE_DEBIT = ("91", "96", "68")
_DEGRADED_BEFORE_DEBIT, _DEGRADED_REVERSED = 0.5, 0.5 + 0.5 * 0.85

# Share of records written in WIB rather than UTC, per topic: the payment service is local,
# the core-banking ledger mostly logs UTC.
_WIB_SHARE = (0.75, 0.3)
# Settlement delay after the debit: log-normal, median about 2 s, at most 10 s; as quantiles.
_SETTLE_DELAYS_MS = tuple(
    min(10_000, 600 + int(math.exp(7.3 + 0.6 * NormalDist().inv_cdf((n + 0.5) / 1024)))) for n in range(1024)
)
_MILLIS = tuple(f".{n:03d}" for n in range(1000))
_DIGITS = tuple(f"{n:03d}" for n in range(1000))


class SimRecord(NamedTuple):
    """One Kafka record as a real producer would send it.

    ``partition`` is what Kafka's default partitioner gives ``key``; ``offset`` is the offset
    the record gets on a fresh topic; ``timestamp_ms`` is the intended produce time.
    """

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    timestamp_ms: int


def generate(
    scenario: str = "normal",
    *,
    seed: int,
    start_ms: int,
    minutes: float | None = 60.0,
    rate_per_min: float = 300.0,
    partitions: int = 4,
    payment_topic: str = PAYMENT_TOPIC,
    ledger_topic: str = LEDGER_TOPIC,
    payments: int | None = None,
    truth: GroundTruth | None = None,
    **knobs: Any,
) -> Iterator[SimRecord]:
    """Records of ``scenario``: payments arrive during ``minutes`` of event time from
    ``start_ms`` (at most ``payments`` of them), at ``rate_per_min`` on an average weekday
    shaped by the daily rhythm; every lifecycle then runs to its end. With ``minutes=None``
    only ``payments`` bounds the run, and the run's length for placing an outage or a
    degradation (``outage_at``, ``degrade_at``) is taken as
    ``payments / (rate_per_min * volume_factor)`` minutes.
    ``knobs`` override the scenario's (see ``stream.simulate.scenarios.Knobs``). ``truth``,
    if given, is filled in as records are generated. About 3 records per payment.

    >>> records = list(generate("normal", seed=1, start_ms=1743213600000, minutes=1))
    >>> records[0].topic, records[0].key == orjson.loads(records[0].value)["reference"]
    ('qris.payment-requests', True)
    >>> records == list(generate("normal", seed=1, start_ms=1743213600000, minutes=1))
    True
    """
    settings = resolve_knobs(scenario, knobs)
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    if minutes is None and payments is None:
        raise ValueError("give minutes, payments or both")
    if (minutes is not None and minutes < 0) or (payments is not None and payments < 0):
        raise ValueError("minutes and payments must not be negative")
    if rate_per_min <= 0:
        raise ValueError(f"rate_per_min must be > 0, got {rate_per_min}")
    if payment_topic == ledger_topic:
        raise ValueError("the payment and ledger topics must differ")
    simulation = _Simulation(
        settings,
        seed=seed,
        start_ms=start_ms,
        minutes=minutes,
        rate_per_min=rate_per_min,
        partitions=partitions,
        topics=(payment_topic, ledger_topic),
        payments=payments,
        truth=truth if truth is not None else GroundTruth(),
    )
    return simulation.records()


class _Simulation:
    def __init__(
        self,
        knobs: Knobs,
        *,
        seed: int,
        start_ms: int,
        minutes: float | None,
        rate_per_min: float,
        partitions: int,
        topics: tuple[str, str],
        payments: int | None,
        truth: GroundTruth,
    ) -> None:
        self._knobs = knobs
        self._rng = random.Random(f"qris-guard/traffic/{seed}")
        # Six hex digits of the seed keep references of different runs apart.
        self._tag = f"{random.Random(f'qris-guard/tag/{seed}').getrandbits(24):06X}"
        catalogue = build_catalogue(seed, knobs.merchants)
        self._merchants = catalogue.merchants
        self._merchant_weights = catalogue.cumulative_weights
        self._merchant_weight_total = catalogue.total_weight
        self._account_ids = AccountPool(seed, knobs.accounts).account_ids
        self._rhythm = Rhythm(rate_per_min * knobs.volume_factor, knobs.profile)
        self._start_ms = start_ms
        if minutes is None:
            assert payments is not None
            self._end_ms = math.inf
            minutes = payments / (rate_per_min * knobs.volume_factor)
        else:
            self._end_ms = start_ms + minutes * 60_000
        self._max_payments = payments
        self._partitions = partitions
        self._topics = topics
        self._truth = truth
        self._partition = KeyPartitioner(partitions)
        self._seconds: dict[int, str] = {}  # local second -> "YYYY-MM-DDTHH:MM:SS"
        self._dates: dict[int, str] = {}  # WIB day -> "YYYYMMDD"
        # (produce_ms, sequence, topic index, partition, key, value): released in that order.
        self._heap: list[tuple[int, int, int, int, str, bytes]] = []
        self._sequence = itertools.count()
        self._payment_count = 0
        self._entry_count = 0
        self._malformed_count = 0
        self._timeout_ms = int(knobs.timeout_s * 1000)
        self._lateness_ms = int(knobs.allowed_lateness_s * 1000)
        self._outage = knobs.outage_window_ms(start_ms, minutes)
        truth.outage_window_ms = self._outage
        truth.outage_switch = knobs.outage_switch if self._outage else None
        # The incidents' counters, filled in as payments arrive (they are truth.incidents' dicts).
        self._outage_incident: dict[str, Any] = {}
        if self._outage is not None:
            # Every answer due through the switch in the window is held: full strength at once.
            begin_ms, end_ms = self._outage
            self._outage_incident = _incident(
                "switch_outage", "switch", knobs.outage_switch, begin_ms, end_ms, begin_ms, 1.0
            )
            truth.incidents.append(self._outage_incident)
        self._degradation: Degradation | None = None
        self._degradation_incident: dict[str, Any] = {}
        degrade_window = knobs.degrade_window_ms(start_ms, minutes)
        if degrade_window is not None:
            scope_id = knobs.degrade_id
            if knobs.degrade_scope == "merchant":
                scope_id = scope_id or catalogue.busiest().nmid
                if scope_id not in {m.nmid for m in self._merchants}:
                    raise ValueError(f"degrade_id {scope_id!r} is no merchant of the catalogue")
            begin_ms, end_ms = degrade_window
            full_from_ms = min(end_ms, begin_ms + int(knobs.degrade_ramp_minutes * 60_000))
            rate = knobs.degrade_failure_rate
            self._degradation = Degradation(knobs.degrade_scope, scope_id, begin_ms, end_ms, full_from_ms, rate)
            self._degradation_incident = _incident(
                "degradation", knobs.degrade_scope, scope_id, begin_ms, end_ms, full_from_ms, rate
            )
            truth.incidents.append(self._degradation_incident)
        # Per record, one draw picks at most one transport effect: these are the upper ends
        # of its intervals; `per_record` is the share of records with any effect.
        within = knobs.disorder_rate
        beyond = within + knobs.disorder_beyond_rate
        redelivered = beyond + knobs.redelivery_rate
        self._transport_thresholds = (within, beyond, redelivered)
        self._per_record = redelivered + knobs.malformed_rate

    # -- the driver: arrivals in time order, records released when their produce time comes

    def records(self) -> Iterator[SimRecord]:
        rng_random = self._rng.random
        heap = self._heap
        pop = heapq.heappop
        new_record = tuple.__new__
        topics = self._topics
        offsets = [[0] * self._partitions, [0] * self._partitions]
        rate_per_ms = self._rhythm.rate_per_ms
        payment = self._payment
        log = math.log
        clock = float(self._start_ms)
        end_ms = self._end_ms
        max_payments = self._max_payments if self._max_payments is not None else math.inf
        emitted = 0
        while True:
            # Poisson arrivals at the rhythm's current rate.
            clock -= log(1.0 - rng_random()) / rate_per_ms(int(clock))
            if clock >= end_ms or self._payment_count >= max_payments:
                break
            arrival_ms = int(clock)
            # Every record still to come is produced at or after this arrival.
            while heap and heap[0][0] <= arrival_ms:
                produce_ms, _, topic, partition, key, value = pop(heap)
                offset = offsets[topic][partition]
                offsets[topic][partition] = offset + 1
                emitted += 1
                yield new_record(SimRecord, (topics[topic], partition, offset, key, value, produce_ms))
            payment(arrival_ms)
        self._truth.payments = self._payment_count
        while heap:
            produce_ms, _, topic, partition, key, value = pop(heap)
            offset = offsets[topic][partition]
            offsets[topic][partition] = offset + 1
            emitted += 1
            yield new_record(SimRecord, (topics[topic], partition, offset, key, value, produce_ms))
        self._truth.records = emitted

    # -- one payment's lifecycle

    def _payment(self, requested_ms: int) -> None:
        knobs = self._knobs
        rng = self._rng
        rnd = rng.random
        truth = self._truth
        tag = self._tag

        self._payment_count += 1
        day = (requested_ms + WIB_OFFSET_MS) // 86_400_000
        date = self._dates.get(day)
        if date is None:
            date = self._dates[day] = wib_date(requested_ms)
        reference = f"QR{date}{tag}{self._payment_count:08d}"
        partition = self._partition(reference.encode())

        merchant = self._merchants[bisect.bisect_right(self._merchant_weights, rnd() * self._merchant_weight_total)]
        u = rnd()
        account_id = self._account_ids[int(u * u * len(self._account_ids))]
        switch_id = merchant.switch_for(rnd())
        prices = merchant.prices
        amount = prices[int(rnd() * len(prices))]
        terminals = merchant.terminal_ids
        terminal_id = terminals[int(rnd() * len(terminals))]
        debited_ms = requested_ms + 120 + int(rnd() ** 2 * 900)
        timeout_ms = self._timeout_ms

        # A degradation fails a share of its scope's payments; one extra draw, only in its window.
        degraded = False
        degradation = self._degradation
        if (
            degradation is not None
            and degradation.start_ms <= requested_ms < degradation.end_ms
            and degradation.covers(
                switch_id=switch_id,
                acquirer_id=merchant.acquirer_id,
                merchant_id=merchant.nmid,
                issuer_id=knobs.issuer_id,
            )
        ):
            self._degradation_incident["payments"] += 1
            if rnd() < degradation.failure_share(requested_ms):
                degraded = True
                self._degradation_incident["affected"] += 1

        if degraded:
            v = rnd()
            if v < _DEGRADED_BEFORE_DEBIT:
                outcome = _FAIL_BEFORE_DEBIT
            elif v < _DEGRADED_REVERSED:
                outcome = _FAIL_REVERSED
            else:
                outcome = _FAIL_UNREVERSED
        elif (u := rnd()) < knobs.failure_rate:
            v = rnd()
            before = knobs.failure_before_debit_share
            if v < before:
                outcome = _FAIL_BEFORE_DEBIT
            elif v < before + (1.0 - before) * knobs.failure_reversed_share:
                outcome = _FAIL_REVERSED
            else:
                outcome = _FAIL_UNREVERSED
        else:
            u -= knobs.failure_rate
            if u < knobs.late_reversal_rate:
                outcome = _FAIL_LATE_REVERSAL
            elif u < knobs.late_reversal_rate + knobs.late_settlement_rate:
                outcome = _SETTLE_LATE
            elif u < knobs.late_reversal_rate + knobs.late_settlement_rate + knobs.stuck_rate:
                outcome = _STUCK
            else:
                outcome = _SETTLE

        if outcome == _SETTLE:
            resolved_ms = debited_ms + _SETTLE_DELAYS_MS[int(rnd() * len(_SETTLE_DELAYS_MS))]
        elif outcome == _SETTLE_LATE:
            resolved_ms = debited_ms + timeout_ms + int(rng.uniform(10_000, 900_000))
        elif outcome == _FAIL_BEFORE_DEBIT:
            resolved_ms = requested_ms + 300 + int(rnd() * 2_700)
        else:
            resolved_ms = debited_ms + 500 + int(rnd() * 7_500)

        # A switch outage holds every answer due through that switch during the window.
        held = False
        outage = self._outage
        if outage is not None and switch_id == knobs.outage_switch and outage[0] <= requested_ms < outage[1]:
            self._outage_incident["payments"] += 1
        if (
            outage is not None
            and outcome != _STUCK
            and switch_id == knobs.outage_switch
            and outage[0] <= resolved_ms < outage[1]
        ):
            held = True
            self._outage_incident["affected"] += 1
            if outcome == _FAIL_BEFORE_DEBIT:
                truth.outage[reference] = "no_response"
            elif rnd() < knobs.outage_late_share:
                outcome = _SETTLE_LATE
                late_ms = knobs.outage_late_max_minutes * 60_000
                resolved_ms = outage[1] + int(rng.uniform(30_000, max(30_001, late_ms)))
                truth.outage[reference] = "late_settled"
            else:
                outcome = _STUCK
                truth.outage[reference] = "never_settled"

        # (occurred_ms, topic, record); each record's "occurred_at" is written by _send.
        events: list[tuple[int, int, dict[str, Any]]] = [
            (
                requested_ms,
                _PAYMENTS,
                {
                    "event_id": f"{reference}:requested",
                    "type": "requested",
                    "reference": reference,
                    "occurred_at": None,
                    "amount": amount,
                    "currency": "IDR",
                    "account_id": account_id,
                    "merchant_id": merchant.nmid,
                    "merchant_name": merchant.name,
                    "mcc": merchant.mcc,
                    "acquirer_id": merchant.acquirer_id,
                    "issuer_id": knobs.issuer_id,
                    "switch_id": switch_id,
                    "terminal_id": terminal_id,
                    "channel": "MPM" if rnd() < 0.92 else "CPM",
                },
            )
        ]
        answer = ""
        response_code = "00"
        if outcome in (_SETTLE, _SETTLE_LATE):
            answer = "settled"
        elif outcome == _FAIL_BEFORE_DEBIT:
            if not held:
                answer = "failed"
                codes = _CODES_DEGRADED_BEFORE_DEBIT if degraded else _CODES_BEFORE_DEBIT
                response_code = codes[int(rnd() * len(codes))]
        elif outcome != _STUCK:
            answer = "failed"
            response_code = _CODES_AFTER_DEBIT[int(rnd() * len(_CODES_AFTER_DEBIT))]

        if outcome != _FAIL_BEFORE_DEBIT:
            self._entry_count += 1
            debit_entry = f"JE{tag}{self._entry_count:010d}"
            events.append(
                (
                    debited_ms,
                    _LEDGER,
                    {
                        "event_id": f"{reference}:debited:{debit_entry}",
                        "type": "debited",
                        "reference": reference,
                        "entry_id": debit_entry,
                        "account_id": account_id,
                        "amount": amount,
                        "currency": "IDR",
                        "occurred_at": None,
                    },
                )
            )
        if answer:
            events.append(
                (
                    resolved_ms,
                    _PAYMENTS,
                    {
                        "event_id": f"{reference}:{answer}",
                        "type": answer,
                        "reference": reference,
                        "occurred_at": None,
                        "amount": amount,
                        "currency": "IDR",
                        "merchant_id": merchant.nmid,
                        "acquirer_id": merchant.acquirer_id,
                        "issuer_id": knobs.issuer_id,
                        "switch_id": switch_id,
                        "response_code": response_code,
                    },
                )
            )

        # What the ledger does next, and what the refund detector should conclude.
        if outcome == _SETTLE:
            if knobs.double_debit_rate and rnd() < knobs.double_debit_rate:
                # The ledger retried a debit that had in fact gone through.
                second_ms = debited_ms + 300 + int(rnd() * 4_700)
                second_entry = self._ledger(events, second_ms, "debited", reference, account_id,
                                            amount, None)  # fmt: skip
                if rnd() < knobs.double_debit_reversed_share:
                    reversed_ms = second_ms + int(rng.uniform(5_000, 120_000))
                    self._ledger(events, reversed_ms, "reversed", reference, account_id, amount,
                                 second_entry)  # fmt: skip
                else:
                    truth.owed[reference] = (amount, "EXCESS_DEBIT")
        elif outcome == _SETTLE_LATE:
            if resolved_ms - debited_ms > timeout_ms:
                truth.cancelled[reference] = "LATE_SETTLEMENT"
        elif outcome == _STUCK:
            truth.owed[reference] = (amount, "SETTLEMENT_TIMEOUT")
        elif outcome == _FAIL_UNREVERSED:
            truth.owed[reference] = (amount, "PAYMENT_FAILED")
        elif outcome == _FAIL_REVERSED:
            reversed_ms = resolved_ms + int(rng.uniform(1_000, 60_000))
            self._ledger(events, reversed_ms, "reversed", reference, account_id, amount,
                         debit_entry)  # fmt: skip
        elif outcome == _FAIL_LATE_REVERSAL:
            reversed_ms = debited_ms + timeout_ms + int(rng.uniform(10_000, 900_000))
            self._ledger(events, reversed_ms, "reversed", reference, account_id, amount,
                         debit_entry)  # fmt: skip
            truth.cancelled[reference] = "LATE_REVERSAL"
        self._send(events, reference, partition)

    def _ledger(
        self,
        events: list[tuple[int, int, dict[str, Any]]],
        occurred_ms: int,
        kind: str,
        reference: str,
        account_id: str,
        amount: int,
        reverses_entry_id: str | None,
    ) -> str:
        """Adds a further ledger record (an extra debit or a reversal); returns its entry id."""
        self._entry_count += 1
        entry_id = f"JE{self._tag}{self._entry_count:010d}"
        record: dict[str, Any] = {
            "event_id": f"{reference}:{kind}:{entry_id}",
            "type": kind,
            "reference": reference,
            "entry_id": entry_id,
            "account_id": account_id,
            "amount": amount,
            "currency": "IDR",
            "occurred_at": None,
        }
        if reverses_entry_id is not None:
            record["reverses_entry_id"] = reverses_entry_id
        events.append((occurred_ms, _LEDGER, record))
        return entry_id

    # -- records: event-time text, produce time, and what the transport does to them

    def _send(self, events: list[tuple[int, int, dict[str, Any]]], reference: str, partition: int) -> None:
        rnd = self._rng.random
        heap = self._heap
        push = heapq.heappush
        sequence = self._sequence
        seconds = self._seconds
        dumps = orjson.dumps
        per_record = self._per_record
        for occurred_ms, topic, record in events:
            # Event-time text: the zone, then the precision, both from one draw.
            u = rnd()
            if u < _WIB_SHARE[topic]:
                local_ms = occurred_ms + WIB_OFFSET_MS
                zone = "+07:00"
            else:
                local_ms = occurred_ms
                zone = "Z"
            second = local_ms // 1000
            text_of_second = seconds.get(second)
            if text_of_second is None:
                if len(seconds) >= 65_536:
                    seconds.clear()
                text_of_second = seconds[second] = second_text(second)
            style = (u * 1000.0) % 1.0
            if style < 0.1:  # finer than milliseconds
                text = f"{text_of_second}{_MILLIS[local_ms % 1000]}{_DIGITS[int(style * 9990)]}{zone}"
            elif style < 0.6 and local_ms % 1000 == 0:  # whole seconds, when exact
                text = text_of_second + zone
            else:
                text = f"{text_of_second}{_MILLIS[local_ms % 1000]}{zone}"
            record["occurred_at"] = text
            value = dumps(record)
            # Producers send a few milliseconds after the event, now and then much later.
            produce_ms = occurred_ms + 2 + int(rnd() ** 4 * 400)
            if per_record:
                u = rnd()
                if u < per_record:
                    self._transport(u, produce_ms, topic, record, value, reference, partition)
                    continue
            push(heap, (produce_ms, next(sequence), topic, partition, reference, value))

    def _transport(
        self,
        u: float,
        produce_ms: int,
        topic: int,
        record: dict[str, Any],
        value: bytes,
        reference: str,
        partition: int,
    ) -> None:
        """What the transport does to one record in ``per_record`` of cases, chosen by the
        draw ``u``: late delivery (within or beyond the allowed lateness), redelivery of the
        same bytes, or an extra broken copy."""
        truth = self._truth
        rng = self._rng
        heap = self._heap
        sequence = self._sequence
        within, beyond, redelivered = self._transport_thresholds
        if u < within:
            produce_ms += int(rng.uniform(1_000, self._lateness_ms - 2_000))
            truth.late_within_lateness += 1
        elif u < beyond:
            lateness = self._lateness_ms
            produce_ms += int(rng.uniform(lateness + 5_000, lateness + 120_000))
            truth.late_beyond_lateness += 1
        heapq.heappush(heap, (produce_ms, next(sequence), topic, partition, reference, value))
        if beyond <= u < redelivered:
            again_ms = produce_ms + int(math.exp(rng.uniform(5.3, 13.3)))  # 0.2 s..10 min
            heapq.heappush(heap, (again_ms, next(sequence), topic, partition, reference, value))
            truth.redelivered += 1
        elif u >= redelivered:
            kind = MALFORMED_KINDS[self._malformed_count % len(MALFORMED_KINDS)]
            self._malformed_count += 1
            key, bad = corrupt(kind, record, reference, topic == _LEDGER, rng)
            bad_partition = partition if key == reference else self._partition(key.encode())
            bad_ms = produce_ms + int(rng.random() * 2_000)
            heapq.heappush(heap, (bad_ms, next(sequence), topic, bad_partition, key, bad))
            truth.malformed[kind] += 1


def _incident(
    kind: str, scope: str, scope_id: str, start_ms: int, end_ms: int, full_from_ms: int, failure_rate: float
) -> dict[str, Any]:
    """A ground-truth incident (see ``GroundTruth.incidents``), its counters at zero."""
    return {
        "kind": kind,
        "scope": {"type": scope, "id": scope_id},
        "start_ms": start_ms,
        "end_ms": end_ms,
        "full_from_ms": full_from_ms,
        "failure_rate": failure_rate,
        "payments": 0,
        "affected": 0,
    }
