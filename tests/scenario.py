"""A small hand-made day of both input topics, partitioned as Kafka's default partitioner would."""

from __future__ import annotations

from collections import Counter

from stream.drivers.replayfile import KafkaRecord
from stream.simulate.partitioner import partition_for
from tests.records import ledger, payment

PAYMENT, LEDGER = "qris.payment-requests", "qris.ledger-debits"


def scenario_records(partitions: int) -> list[KafkaRecord]:
    """A small hand-made day: settled, unsettled, failed, reversed, double debit, late
    settlement and late reversal, redelivery, malformed input."""
    raw: list[tuple[str, bytes | None, bytes]] = []
    t = 0.0
    for i in range(60):
        ref = f"QR{i:04d}"
        t += 7
        kind = i % 6
        raw.append((PAYMENT, ref.encode(), payment(f"{ref}-q", "requested", ref, t)))
        raw.append((LEDGER, ref.encode(), ledger(f"{ref}-d", "debited", ref, t + 1)))
        if kind == 0:
            raw.append((PAYMENT, ref.encode(), payment(f"{ref}-s", "settled", ref, t + 3)))
        elif kind == 1:
            raw.append((PAYMENT, ref.encode(), payment(f"{ref}-f", "failed", ref, t + 3, response_code="91")))
        elif kind == 2:
            raw.append((PAYMENT, ref.encode(), payment(f"{ref}-f", "failed", ref, t + 3)))
            raw.append((LEDGER, ref.encode(), ledger(f"{ref}-v", "reversed", ref, t + 4)))
        elif kind == 3:
            raw.append((LEDGER, ref.encode(), ledger(f"{ref}-d2", "debited", ref, t + 2)))
            raw.append((PAYMENT, ref.encode(), payment(f"{ref}-s", "settled", ref, t + 3)))
            raw.append((LEDGER, ref.encode(), ledger(f"{ref}-d2", "debited", ref, t + 2)))  # redelivered
        # kind 4: never settles; kind 5: settles 8 minutes late
    for i in range(5, 60, 6):
        ref = f"QR{i:04d}"
        raw.append((PAYMENT, ref.encode(), payment(f"{ref}-late", "settled", ref, 7 * (i + 1) + 480)))
    raw.append((PAYMENT, b"QRBAD", b'{"event_id": "x", "type": "settled"'))
    raw.append((LEDGER, b"QRBAD2", ledger("bad2", "debited", "QRBAD2", 10, amount=25000.5)))  # type: ignore[arg-type]
    # Move both streams of every partition well past the last deadline.
    tails: dict[int, str] = {}
    k = 0
    while len(tails) < partitions:
        tails.setdefault(partition_for(f"TAIL{k}".encode(), partitions), f"TAIL{k}")
        k += 1
    for ref in tails.values():
        raw.append((PAYMENT, ref.encode(), payment(f"{ref}-p", "requested", ref, 2000)))
        raw.append((LEDGER, ref.encode(), ledger(f"{ref}-l", "reversed", ref, 2000, amount=1)))
    offsets: Counter[tuple[str, int]] = Counter()
    out = []
    for topic, key, value in raw:
        p = partition_for(key, partitions) if key is not None else 0
        out.append(KafkaRecord(topic, p, offsets[(topic, p)], None, key, value))
        offsets[(topic, p)] += 1
    return out
