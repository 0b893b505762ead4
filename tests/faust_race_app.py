"""A minimal Faust app for `test_kafka_worker_consumer.py`, run as `python tests/faust_race_app.py
worker`: one raw topic, one agent writing every delivered (partition, offset) to a file.

It forces the race behind Faust's feed stalls: its drain loop keeps fetching while the flow is
stopped (in Faust a fetch does so only when it spans a revocation and returns records of the new
assignment before the flow resumes, a rare window), and its rebalance handler takes
`RACE_HANDLER_S` seconds, as the worker's restores do. `RACE_GUARDED=1` installs the worker's
`GuardedConsumer`. Reaches into Faust internals on purpose: it is the race being tested.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faust  # noqa: E402

from stream.worker.consumer import GuardedConsumer  # noqa: E402

app = faust.App(
    os.environ["RACE_APP_ID"],
    broker=f"kafka://{os.environ['RACE_BOOTSTRAP']}",
    store="memory://",
    datadir=os.environ["RACE_DATA_DIR"],
    consumer_auto_offset_reset="earliest",
    table_standby_replicas=1,
    broker_session_timeout=8,
    broker_heartbeat_interval=0.8,
)
if os.environ.get("RACE_GUARDED") == "1":
    app.transport.Consumer = GuardedConsumer
topic = app.topic(
    os.environ["RACE_TOPIC"], key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
)
delivered = open(os.environ["RACE_OUT"], "a", buffering=1)  # noqa: SIM115


@app.agent(topic)
async def take(stream: Any) -> None:
    async for events in stream.take_events(500, within=0.2):
        for ev in events:
            delivered.write(f"{ev.message.partition} {ev.message.offset}\n")


@app.on_rebalance_complete.connect
async def slow_handler(app_: Any, **kwargs: Any) -> None:
    await asyncio.sleep(float(os.environ.get("RACE_HANDLER_S", "5")))


def fetch_while_stopped() -> None:
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


if __name__ == "__main__":
    app.finalize()
    fetch_while_stopped()
    app.main()
