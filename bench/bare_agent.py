"""A bare Faust agent on the worker's own Faust app: the ceiling Faust's per-event path puts on
one worker process (not a test; started by `bench/live_throughput.py`).

    QRIS_BOOTSTRAP=... QRIS_APP_ID=... python bench/bare_agent.py

The app is `stream.worker.app.faust_app(settings)` (raw topics, the same consumer, fetch, buffer
and producer settings; uvloop and the collector's pace as the worker: `prepare_process`), one
agent over both input topics taking batches as the worker's agent does (`intake.take_batches`,
Faust's `take_events(QRIS_BATCH_MAX, within=QRIS_BATCH_WITHIN_S)` batches) and only counting the records: no
decode, decide, state or outputs. It serves `/qris/stats` with the count, as the worker does, so
the benchmark times both the same way. Faust reads its own settings from the environment too,
over the app's (`CYTHON_OPTIMIZATIONS=0`, `STREAM_BUFFER_MAXSIZE=...`): that is how the benchmark
tries other Faust settings on the bare agent and the worker alike (`--variant`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, cast

import faust

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream.settings import from_env  # noqa: E402
from stream.worker.app import faust_app, prepare_process, raw_topic  # noqa: E402
from stream.worker.intake import take_batches  # noqa: E402


def main() -> int:
    settings = from_env(os.environ)
    prepare_process(settings)  # the worker's: data dir, uvloop, the collector's pace
    app = faust_app(settings)
    inputs = raw_topic(app, settings.payment_topic, settings.ledger_topic)
    counts = {"records": 0, "batches": 0}

    @app.agent(inputs, name="reconcile_payments")
    async def count_records(stream: faust.StreamT[bytes]) -> None:
        async for events in take_batches(
            cast(faust.Stream[bytes], stream), settings.batch_max, settings.batch_within_s
        ):
            counts["records"] += len(events)
            counts["batches"] += 1

    @app.page("/qris/stats")
    async def stats(web: Any, request: Any) -> Any:
        return web.json({"counts": dict(counts)})

    faust.Worker(app, loglevel=settings.log_level.upper()).execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
