"""The Faust application: raw-bytes topics, one agent, one state table, a timer, a status page.

Built by `build_app(settings)`; `run_worker(settings)` runs it in the foreground. Faust's
windowed tables, timers and group_by run on wall clock, so none of them is on the decision
path: the agent hands whole batches to `ReconcileShell`, which calls the core.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from ..security import aiokafka_config, faust_credentials, topic_configs
from ..settings import Settings
from .batches import finish_before_ack
from .bursts import BurstShell
from .feeds import TopicSilence
from .gapfill import BrokerGapFetcher
from .incidents import follow_incidents_topic
from .metrics import WorkerMetrics
from .pages import add_pages
from .recovery import RecoveryWatchdog, restart_self
from .shell import ReconcileShell
from .watch import WorkerWatch

log = logging.getLogger("qris_guard.worker")

# The shell's lock held this long means something under it hangs (`watch_state_recovery`).
SHELL_STALL_S = 90.0

RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


class TableStore:
    """Writes a batch's changed keys straight to partition p of the table: the local RocksDB
    store of p now, and the changelog messages of the batch to changelog partition p, handed
    to the Kafka client in one go by `write_changelog`. `Table.__setitem__` would take the
    partition from the current event, which a batch does not have, and would queue each message
    in Faust's send buffer, whose flush before an offset commit gives up after 0.1 s without
    progress (a commit could then run ahead of the state it covers)."""

    def __init__(self, app: faust.App, table: Any) -> None:
        self.app = app
        self.table = table
        self.rocksdb = hasattr(table.data, "_db_for_partition")  # else memory:// (trials only)
        self.pending: dict[int, list[tuple[bytes, bytes | None]]] = {}

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        self.pending.setdefault(partition, []).append((key, value))
        if self.rocksdb:
            db = self.table.data._db_for_partition(partition)
            if value is None:
                db.delete(key)
            else:
                db.put(key, value)
        elif value is None:
            self.table.data.data.pop(key, None)
        else:
            self.table.data.data[key] = value

    async def write_changelog(self) -> None:
        """Hand this batch's changelog messages to the Kafka client (in order per partition);
        its flush before every offset commit then waits for all of them."""
        if not self.pending:
            return
        client = self.app.producer._producer  # the aiokafka producer behind Faust's
        topic = self.table.changelog_topic.get_topic_name()
        last: dict[int, Any] = {}
        for partition, items in self.pending.items():
            for key, value in items:
                last[partition] = await client.send(topic, value, key, partition=partition)
        self.pending.clear()
        if self.rocksdb:
            for partition, fut in last.items():
                fut.add_done_callback(self._persisted(topic, partition))

    def _persisted(self, topic: str, partition: int) -> Any:
        def done(fut: Any) -> None:
            # What `_on_changelog_sent` does per message: the store remembers how far the
            # changelog is in it, so a restart reads only what came after.
            if not fut.cancelled() and fut.exception() is None:
                self.table.data.set_persisted_offset(TP(topic, partition), fut.result().offset)

        return done

    def load(self, partition: int) -> list[tuple[bytes, bytes]]:
        data = self.table.data
        if not self.rocksdb:
            return [(k, v) for k, v in data.data.items() if k.startswith(f"{partition}/".encode())]
        offset_key = data.offset_key
        return [(k, v) for k, v in data._db_for_partition(partition).items() if k != offset_key]


def build_app(settings: Settings, input_partitions: int | None = None) -> tuple[faust.App, ReconcileShell]:
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h}" for h in settings.bootstrap.split(",")],
        broker_credentials=faust_credentials(settings),
        store=settings.store,
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee="at_least_once",
        web_enabled=settings.web_port > 0,
        web_port=max(settings.web_port, 1),
        web_host=settings.web_host,
        # Faust binds 0.0.0.0 unless told; its /table/ (state, account ids) and /router/
        # (cluster layout) endpoints and the debug pages are off: only /qris/* is served.
        web_bind=settings.web_host,
        web_tables_enabled=False,
        web_router_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        broker_max_poll_records=min(settings.batch_max, 5000),
        consumer_max_fetch_size=4 * 1024 * 1024,
        stream_buffer_maxsize=max(2 * settings.batch_max, 4096),
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        producer_linger_ms=5,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(0.5, settings.session_timeout_s / 10),
        producer_max_batch_size=512 * 1024,
    )
    # With its statistics page off, Faust serves `/` as {"status": "OK"} whatever the broker
    # says: a health check that lies. Readiness is /qris/ready; `/` answers 404.
    blueprints = app.web.blueprints
    blueprints._enabled = [(p, bp) for p, bp in blueprints._enabled if "production_index" not in str(bp)]
    inputs = app.topic(settings.payment_topic, settings.ledger_topic, **RAW)
    outputs = {
        name: app.topic(name, **RAW)
        for name in (settings.refund_topic, settings.alert_topic, settings.dead_letter_topic)
    }
    # One partition: the one worker that owns it runs the burst detector over all partitions.
    signals = outputs[settings.signals_topic] = app.topic(settings.signals_topic, partitions=1, **RAW)
    incidents = app.topic(settings.incidents_topic, partitions=1, **RAW)
    state = app.Table(
        "reconciliation-state",
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        extra_topic_configs=topic_configs(settings),
    )

    async def send(topic: str, key: bytes | None, value: bytes) -> Any:
        if topic == settings.signals_topic:
            return await signals.send(key=key, value=value, partition=0, force=True)
        if topic == settings.incidents_topic:
            return await incidents.send(key=key, value=value, partition=0, force=True)
        return await outputs[topic].send(key=key, value=value, force=True)

    async def flush() -> None:
        await app.producer.flush()

    # What the worker saw, for /metrics, the lookup API and the dashboard: every output passes by.
    watch = WorkerWatch(settings)
    watched_send = watch.wrap_send(send)
    store = TableStore(app, state)
    gaps = BrokerGapFetcher(aiokafka_config(settings))
    shell = ReconcileShell(
        settings,
        store,
        watched_send,
        flush,
        store.write_changelog,
        lambda: app.consumer.assignment(),
        fetch_gap=gaps.fetch,
    )
    shell.on_engine = watch.watch_engine
    shell.on_idle = TopicSilence((settings.payment_topic, settings.ledger_topic), lambda: shell.engines)
    metrics = WorkerMetrics(watch, lambda: shell.engines, lambda t, p: _highwater(app, t, p))

    @app.agent(inputs, name="reconcile_payments")
    async def reconcile_payments(stream: faust.StreamT[bytes]) -> None:
        """Decode, decide, send: one batch of both input topics at a time."""
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            with metrics.batch_seconds.time():
                await finish_before_ack(shell.process_batch(events))

    bursts = BurstShell(settings, input_partitions or settings.partitions, watched_send, flush)

    @app.agent(signals, name="score_failure_bursts")
    async def score_failure_bursts(stream: faust.StreamT[bytes]) -> None:
        """The partitions' closed minutes in, failure-burst incidents out."""
        async for events in stream.take_events(500, within=0.5):
            await finish_before_ack(bursts.process_batch(events))

    if settings.max_hold_s > 0:

        @app.task
        async def follow_incidents() -> None:
            """Every worker reads the incidents topic whole: the detector's decisions and progress
            reach every partition engine (refund holds wait for them)."""
            await follow_incidents_topic(settings, shell)

    @app.timer(interval=max(1.0, min(settings.idle_timeout_s / 4, 10.0)), name="watch_idle_feeds")
    async def watch_idle_feeds() -> None:
        await shell.check_idle_feeds()

    watchdog = RecoveryWatchdog()
    watching: list[asyncio.Task[None]] = []

    async def watch_state_recovery() -> None:
        # A plain task, not an app timer: Faust starts timers only after the first recovery.
        while True:
            await asyncio.sleep(5.0)
            recovery = app.tables.recovery
            remaining = recovery.active_remaining_total() if recovery.in_recovery else 0
            if watchdog.stalled(recovery.in_recovery, remaining, time.monotonic()):
                log.critical(
                    "state recovery made no progress for %.0f s (%d changelog records remaining); restarting",
                    watchdog.stall_s,
                    remaining,
                )
                restart_self()
            held_s = shell.lock.held_for_s(time.monotonic())
            if held_s >= SHELL_STALL_S:
                # Seen once in the Kafka tier after a restart: the worker decided nothing for two
                # minutes with no error (cause not found). Whatever hangs under the lock (a send,
                # a flush, a state write), a restart resumes from the last commit.
                log.critical("a batch or hand-over of decisions has hung for %.0f s; restarting", held_s)
                restart_self()

    @app.on_partitions_assigned.connect  # type: ignore[misc]
    async def on_assigned(app_: Any, assigned: Any = None, **kwargs: Any) -> None:
        watch.rebalances += 1
        watch.keep_partitions({tp.partition for tp in assigned or () if tp.topic == settings.payment_topic})
        if not watching:
            watching.append(asyncio.ensure_future(watch_state_recovery()))
        async with shell.lock:  # never in the middle of a batch
            shell.forget_partitions()
        async with bursts.lock:
            bursts.forget()

    @app.on_rebalance_complete.connect  # type: ignore[misc]
    async def on_recovered(app_: Any, **kwargs: Any) -> None:
        # The tables are recovered: restore the engines of every input partition assigned here
        # now, not at their next record, so the lookup API, /metrics and the dashboard see a
        # quiet partition's state too (a batch would restore them the same way).
        async with shell.lock:
            for tp in sorted(app.consumer.assignment()):
                if tp.topic == settings.payment_topic and tp.partition not in shell.engines:
                    shell.engine(tp.partition)

    @app.on_partitions_revoked.connect  # type: ignore[misc]
    async def on_revoked(app_: Any, revoked: Any = None, **kwargs: Any) -> None:
        async with shell.lock:
            shell.forget_partitions()
        async with bursts.lock:
            bursts.forget()

    @app.page("/qris/stats")
    async def stats(web: Any, request: Any) -> Any:
        return web.json({**shell.stats(), "bursts": bursts.stats()})

    @app.page("/qris/ready")
    async def ready(web: Any, request: Any) -> Any:
        """200 when the worker reaches the broker and owns input partitions; else 503 and why."""
        reason = await not_ready_reason(app, settings)
        if reason:
            return web.json({"ready": False, "reason": reason}, status=503)
        return web.json({"ready": True})

    add_pages(app, settings, shell, watch, metrics)
    return app, shell


def _highwater(app: faust.App, topic: str, partition: int) -> int | None:
    try:
        return int(app.consumer.highwater(TP(topic, partition)))
    except Exception:  # not assigned here, or not fetched yet
        return None


async def not_ready_reason(app: faust.App, settings: Settings, timeout_s: float = 3.0) -> str | None:
    """Why the worker is not ready to process records, or None: a metadata request to the
    broker (with the worker's credentials) must answer within `timeout_s`, no rebalance or
    table recovery may be under way, and an input partition must be assigned here."""
    producer = getattr(app.producer, "_producer", None)
    if producer is None:
        return "the Kafka producer has not started"
    try:
        await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout_s)
    except Exception as exc:  # noqa: BLE001 - any failure means no broker
        return f"no answer from the broker {settings.bootstrap}: {type(exc).__name__}"
    if app.rebalancing:
        return "the consumer group is rebalancing"
    if getattr(app, "in_recovery", False):
        return "table state is being recovered from the changelog"
    inputs = {settings.payment_topic, settings.ledger_topic}
    if not any(tp.topic in inputs for tp in app.consumer.assignment()):
        return "no input partition is assigned to this worker"
    return None


class _Worker(faust.Worker):
    json_logs = False

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        if self.json_logs:
            from .logs import use_json

            use_json(logger)
        # Client libraries log every message's key and value at DEBUG (customer data):
        # never below INFO, whatever the worker's level. It also spares a log record per send.
        for name in ("aiokafka", "kafka", "faust", "mode"):
            logging.getLogger(name).setLevel(max(level, logging.INFO))
        super().on_setup_root_logger(logger, level)


def run_worker(settings: Settings) -> int:
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    if settings.uvloop:
        import uvloop

        uvloop.install()  # before Faust makes its loop: about a quarter more records/s here
    app, _shell = build_app(settings, _input_partitions(settings))
    _Worker.json_logs = settings.log_format == "json"
    worker = _Worker(app, loglevel=settings.log_level.upper(), override_logging=True)
    worker.execute_from_commandline()
    return 0


def _input_partitions(settings: Settings) -> int | None:
    """The input topics' partition count: the burst detector waits for every partition."""
    from ..topics import check_copartitioned

    try:
        return check_copartitioned(settings)
    except SystemExit as exc:
        log.warning("%s; burst detection assumes QRIS_PARTITIONS=%d", exc, settings.partitions)
        return None
