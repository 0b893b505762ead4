"""A Faust app for `test_kafka_signals_race.py`, run as `python tests/faust_signals_race_app.py
worker`: the worker's burst detector (`BurstShell`, with its broker gap reader and the group's
committed offset asked through Faust's consumer) on a single-partition signals topic, under
Faust's own consumer with the race of `faust_race_app.py` forced: the drain loop fetches while
the flow is stopped and the rebalance handler takes `RACE_HANDLER_S` seconds. Records fetched
then are dropped and, on a partition with no committed offset, never fetched again: Faust's
drop, for real. A task does what the worker's feed check does for the signals partition
(position against the broker's end offset; `catch_up` after `RACE_STALL_S` without progress).
Alerts go to `RACE_OUT` (one JSON per line), the detector's counts to `RACE_OUT.counts`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faust  # noqa: E402

from stream.security import aiokafka_config  # noqa: E402
from stream.settings import Settings  # noqa: E402
from stream.worker.bursts import BurstShell, group_committed  # noqa: E402
from stream.worker.endoffsets import BrokerEndOffsets  # noqa: E402
from stream.worker.gapfill import BrokerGapFetcher  # noqa: E402

settings = Settings(
    bootstrap=os.environ["RACE_BOOTSTRAP"], partitions=2, max_hold_s=0, snapshot_every=0
).with_topic_prefix(os.environ["RACE_PREFIX"])
app: Any = faust.App(
    os.environ["RACE_APP_ID"],
    broker=f"kafka://{settings.bootstrap}",
    store="memory://",
    datadir=os.environ["RACE_DATA_DIR"],
    consumer_auto_offset_reset="earliest",
    table_standby_replicas=1,
    broker_session_timeout=8,
    broker_heartbeat_interval=0.8,
)
topic = app.topic(
    settings.signals_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
)
out = open(os.environ["RACE_OUT"], "a", buffering=1)  # noqa: SIM115


async def send(topic_name: str, key: bytes | None, value: bytes) -> None:
    if topic_name == settings.alert_topic:
        out.write(value.decode() + "\n")


async def nothing() -> None:
    return None


bursts = BurstShell(
    settings,
    2,
    send,
    nothing,
    fetch_gap=BrokerGapFetcher(aiokafka_config(settings)).fetch,
    committed=group_committed(app, settings.signals_topic),
)


def write_counts() -> None:
    Path(os.environ["RACE_OUT"] + ".counts").write_bytes(orjson.dumps(bursts.counts))


@app.agent(topic)
async def score(stream: Any) -> None:
    async for events in stream.take_events(500, within=0.2):
        await bursts.process_batch(events)
        write_counts()


@app.on_partitions_revoked.connect
async def revoked(app_: Any, revoked: Any = None, **kwargs: Any) -> None:
    async with bursts.lock:
        bursts.forget()


@app.on_partitions_assigned.connect
async def assigned(app_: Any, assigned: Any = None, **kwargs: Any) -> None:
    async with bursts.lock:
        bursts.forget()


@app.on_rebalance_complete.connect
async def slow_handler(app_: Any, **kwargs: Any) -> None:
    await asyncio.sleep(float(os.environ.get("RACE_HANDLER_S", "5")))


def fetch_while_stopped() -> None:  # as `faust_race_app.py`'s
    consumer: Any = app.consumer

    async def fetch_records(aiokafka_consumer: Any, active: Any, timeout: Any = None, max_records: Any = None) -> Any:
        fetcher = aiokafka_consumer._fetcher  # Faust's `_fetch_records` without its flow check
        with fetcher._subscriptions.fetch_context():
            return await fetcher.fetched_records(active, timeout=timeout, max_records=max_records)

    async def wait_next_records(timeout: float) -> Any:  # without waiting for the flow to resume
        active = consumer._get_active_partitions()
        return await consumer._getmany(active_partitions=active, timeout=timeout), active

    consumer._thread._fetch_records = fetch_records
    consumer._wait_next_records = wait_next_records


@app.task
async def watch_signals() -> None:
    ends = BrokerEndOffsets(aiokafka_config(settings), "race-end-offsets")
    tp = (settings.signals_topic, 0)
    since: tuple[int, float] | None = None
    while True:
        await asyncio.sleep(1.0)
        if (
            app.rebalancing
            or bursts.lock.locked()
            or tp not in {(t.topic, t.partition) for t in app.consumer.assignment()}
        ):
            since = None
            continue
        position = await bursts.position()
        try:
            end = (await ends.ask([tp]))[tp]
        except Exception:  # noqa: BLE001 - no answer: no lag known
            continue
        if position is None or end <= position:
            since = None
            continue
        if since is None or since[0] != position:
            since = (position, time.monotonic())
        elif time.monotonic() - since[1] >= float(os.environ.get("RACE_STALL_S", "5")):
            await bursts.catch_up(end)
            write_counts()
            since = None


if __name__ == "__main__":
    app.finalize()
    fetch_while_stopped()
    app.main()
