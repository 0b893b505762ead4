"""CPU per record of what Faust does between a fetched message and the agent's batch, without a
broker (not a test): the conductor's callback for every message (as the worker's drain loop calls
it, `start_inline`), then the agent's batches, counted, acked. Adds `intake.take_batches` (for
Faust's `take_events`), `intake.RawSchema` (for Faust's raw codecs) and the conductor's fast path
(`intake.QuickHandler`) one at a time, in one process, in alternating rounds, so the ratios hold
on a noisy machine. The fetch itself (aiokafka, Faust's `getmany`) is not included.

    python bench/intake_cost.py --records 100000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import faust  # noqa: E402
from faust.transport.conductor import Conductor  # noqa: E402
from faust.types import TP  # noqa: E402
from faust.types.tuples import ConsumerMessage  # noqa: E402

from stream.settings import Settings  # noqa: E402
from stream.worker.app import faust_app, prepare_process  # noqa: E402
from stream.worker.consumer import GuardedConsumer, start_inline  # noqa: E402
from stream.worker.intake import RawSchema, take_batches  # noqa: E402

TOPICS = ("payment-requests", "ledger-debits")
FETCH = 2000  # messages per fetch handed to the conductor (broker_max_poll_records)


async def one_run(records: int, faust_take: bool, raw_schema: bool, quick: bool, settings: Settings) -> float:
    """µs of process CPU per record."""
    app: Any = faust_app(settings)
    app.flow_control.resume()
    app.topics._acking_topics.update(TOPICS)
    schema = RawSchema() if raw_schema else None
    topic = app.topic(
        *TOPICS,
        schema=schema,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    stream = cast(faust.Stream[bytes], app.stream(topic))
    conductor = app.topics
    for name in TOPICS:
        for p in range(4):
            tp = TP(name, p)
            build = conductor._build_handler if quick else partial(Conductor._build_handler, conductor)
            conductor._tp_to_callback[tp] = build(tp, set(conductor._topics))
    deliver_now = GuardedConsumer._deliver_now.__get__(app.consumer)
    value = b'{"event_id":"e","type":"requested","reference":"r","amount":25000}' * 4
    msgs = [
        ConsumerMessage(TOPICS[i % 2], i % 4, i // 8, 1.7e9, 0, [], b"ref-%d" % i, value, None, generation_id=0)
        for i in range(records)
    ]
    counted = 0
    done = asyncio.Event()

    async def agent() -> None:
        nonlocal counted
        batches: Any = (
            stream.take_events(settings.batch_max, within=settings.batch_within_s)
            if faust_take
            else take_batches(stream, settings.batch_max, settings.batch_within_s)
        )
        async for events in batches:
            counted += len(events)
            if counted >= records:
                break
        await batches.aclose()
        done.set()

    queue = cast(Any, stream.channel).queue
    started = time.process_time()
    task = asyncio.ensure_future(agent())
    for at in range(0, records, FETCH):
        for m in msgs[at : at + FETCH]:  # as `GuardedConsumer._drain_messages`
            if deliver_now(m.tp, m):
                continue
            rest = start_inline(conductor.on_message(m))
            if rest is not None:
                await rest
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
    variants = {
        "main (take_events, Faust's raw codecs, Faust's conductor callback)": (True, False, False),
        "take_batches": (False, False, False),
        "take_batches, RawSchema": (False, True, False),
        "take_batches, RawSchema, conductor fast path (this tree)": (False, True, True),
    }
    got: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for label, (faust_take, raw, quick) in variants.items():
            us = asyncio.run(one_run(args.records, faust_take, raw, quick, settings))
            got[label].append(us)
            print(f"round {r + 1}: {label}: {us:.1f} µs CPU per record", flush=True)
    base = statistics.median(next(iter(got.values())))
    print("median of the rounds:")
    for label, values in got.items():
        med = statistics.median(values)
        print(f"  {label}: {med:.1f} µs ({', '.join(f'{v:.1f}' for v in values)}), {med / base:.2f} of main's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
