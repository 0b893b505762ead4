"""CPU per record of what the worker does between a fetch response and the agent's batch,
without a broker (not a test): aiokafka unpacks each fetched partition (its C record batches,
CRCs checked, as in the consumer thread), the worker's drain loop hands the records to the
conductor's fast path (`GuardedConsumer._deliver_fetch`, `intake.QuickHandler`), and the agent
takes them in batches (`intake.take_batches`), counted, acked. Compares the records as aiokafka
builds them (a `ConsumerRecord` each, then copied into Faust's message: stop 11) with the
worker consumer thread's hook (`consumer.MessageResults`: Faust's messages built straight from
aiokafka's records), in one process, in alternating rounds, so the ratio holds on a noisy
machine. Not included: the socket, the fetch response's decoding, the thread hand-over.

    python bench/intake_cost.py --records 100000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import faust  # noqa: E402
from aiokafka.consumer.fetcher import FetchResult, PartitionRecords  # noqa: E402
from aiokafka.record.default_records import DefaultRecordBatchBuilder  # noqa: E402
from aiokafka.record.memory_records import MemoryRecords  # noqa: E402
from faust.types import TP  # noqa: E402

from stream.settings import Settings  # noqa: E402
from stream.worker.app import faust_app, prepare_process, raw_topic  # noqa: E402
from stream.worker.consumer import MessageResults  # noqa: E402
from stream.worker.intake import take_batches  # noqa: E402

TOPICS = ("payment-requests", "ledger-debits")
FETCH = 2000  # records per fetch handed over (broker_max_poll_records)
VALUE = b'{"event_id":"QR2025032949:requested","type":"requested","reference":"QR2025032949","amount":25000}' * 4


def fetches(records: int) -> list[tuple[TP, bytes]]:
    """`records` records as fetch responses of `FETCH` records of one partition each (record
    batches of up to 256 KiB, as the simulator's producer writes them)."""
    out = []
    offsets: dict[TP, int] = {}
    for at in range(0, records, FETCH):
        tp = TP(TOPICS[(at // FETCH) % 2], (at // FETCH // 2) % 4)
        base = offsets.get(tp, 0)
        data = bytearray()
        i = 0
        n = min(FETCH, records - at)
        while i < n:
            builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 256 * 1024)
            first = i
            while i < n and builder.append(i - first, 1_743_213_600_000 + i, b"QR2025032949%012d" % i, VALUE, []):
                i += 1
            batch = builder.build()
            batch[0:8] = struct.pack(">q", base + first)
            data += batch
        offsets[tp] = base + n
        out.append((tp, bytes(data)))
    return out


async def one_run(responses: list[tuple[TP, bytes]], records: int, hooked: bool, settings: Settings) -> float:
    """µs of process CPU per record."""
    app: Any = faust_app(settings)
    app.flow_control.resume()
    app.topics._acking_topics.update(TOPICS)
    stream = cast(faust.Stream[bytes], app.stream(raw_topic(app, *TOPICS)))
    conductor = app.topics
    for name in TOPICS:
        for p in range(4):
            tp = TP(name, p)
            conductor._tp_to_callback[tp] = conductor._build_handler(tp, set(conductor._topics))
    consumer = app.consumer
    consumer.highwater = lambda tp: 1 << 40
    consumer._commit_every = None  # no broker to commit to
    counted = 0
    done = asyncio.Event()

    async def agent() -> None:
        nonlocal counted
        batches: Any = take_batches(stream, settings.batch_max, settings.batch_within_s)
        async for events in batches:
            counted += len(events)
            if counted >= records:
                break
        await batches.aclose()
        done.set()

    queue = cast(Any, stream.channel).queue
    results: dict[Any, Any] = MessageResults() if hooked else {}
    started = time.process_time()
    task = asyncio.ensure_future(agent())
    for tp, data in responses:
        # the consumer thread: aiokafka's fetcher stores the response, `getall` unpacks it
        results[tp] = FetchResult(
            tp,
            assignment=None,
            partition_records=PartitionRecords(tp, MemoryRecords(data), [], 0, None, None, True, "read_uncommitted"),
            backoff=0,
        )
        fetched = {tp: list(results.pop(tp)._partition_records)}
        await consumer._deliver_fetch(fetched, None, app.consumer_generation_id)
        while queue.qsize() > FETCH:  # as the consumer's pause at the buffer's mark
            await asyncio.sleep(0)
        await asyncio.sleep(0)
    await asyncio.wait_for(done.wait(), 60)
    await task
    return (time.process_time() - started) * 1e6 / records


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    settings = Settings(store="memory://", web_port=0, data_dir="/tmp/intake-cost")
    prepare_process(settings)
    responses = fetches(args.records)
    variants = {
        "aiokafka's ConsumerRecords copied into messages (stop 11)": False,
        "messages unpacked (this tree)": True,
    }
    got: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for label, hooked in variants.items():
            us = asyncio.run(one_run(responses, args.records, hooked, settings))
            got[label].append(us)
            print(f"round {r + 1}: {label}: {us:.2f} µs CPU per record", flush=True)
    base = statistics.median(next(iter(got.values())))
    print("median of the rounds:")
    for label, values in got.items():
        med = statistics.median(values)
        print(f"  {label}: {med:.2f} µs ({', '.join(f'{v:.2f}' for v in values)}), {med / base:.3f} of stop 11's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
