"""The Faust application: raw-bytes topics, one agent, a timer, a status page; the state is the
project's own store (`statestore.PartitionStore`), not a Faust table.

Built by `build_app(settings)`; `run_worker(settings)` runs it in the foreground. Faust's
windowed tables, timers and group_by run on wall clock, so none of them is on the decision
path: the agent hands whole batches to `ReconcileShell`, which calls the core. A rebalance
drops only the engines of partitions that moved away; a partition newly assigned is restored
from its local state and its changelog tail before its first batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import faust
from faust.sensors import Monitor
from faust.types import TP, Message, StreamT, TopicT
from faust.types.events import EventT

from ..core import codec
from ..core.alerts import input_repartitioned_alert
from ..core.partition import PartitionEngine
from ..core.reference import StateVersionError
from ..drivers.livesettings import SETTINGS_HEADER, sent_behind, settings_header
from ..security import aiokafka_config, faust_credentials
from ..settings import Settings
from ..topics import (
    REPARTITION_HELP,
    InputPartitionsCheck,
    PartitionsRefused,
    alert_text,
    assigned_beyond,
    send_refusal_alert,
)
from .batches import finish_before_ack
from .bursts import BurstShell, group_committed
from .clockstall import ClockStall
from .consumer import guarded_consumer
from .endoffsets import END_OFFSETS_TIMEOUT_S, BrokerEndOffsets, EndOffsetsUnknown
from .feeds import TopicSilence
from .freeze import on_sigcont, watch_for_freezes
from .gapfill import MARKERS_PROBE_OFFSETS, BrokerGapFetcher, only_markers
from .incidents import follow_incidents_topic
from .intake import QuickConductor, RawSchema, batch_ack, take_batches
from .metrics import WorkerMetrics
from .pages import add_pages
from .partitioncounts import BrokerPartitionCounts, PartitionCountsUnknown
from .recovery import (
    SIGNALS_STALL_S,
    FeedStallWatchdog,
    RecoveryWatchdog,
    restart_self,
    self_restarts,
    stop_unreadable_state,
)
from .shell import ReconcileShell
from .statestore import UNKNOWN_REMAINING, KafkaChangelog, PartitionStore, changelog_topic_name
from .stopdeadline import StopDeadline
from .watch import WorkerWatch

log = logging.getLogger("qris_guard.worker")

# The shell's lock held this long means something under it hangs (`watch_state_recovery`).
SHELL_STALL_S = 90.0
# Seconds between two asks of the input topics' partition counts (`watch_input_partitions`):
# Kafka's clients see added partitions only at their next metadata refresh (5 min by default),
# and a worker deciding meanwhile refunds the debits whose settlements went to the new partitions.
INPUT_PARTITIONS_CHECK_S = 10.0
# The longest a stop for changed input partitions waits for its alert to be sent (`stop_for_partitions`).
STOP_ALERT_TIMEOUT_S = 5.0
# How long a stop waits for the broker clients beside Faust's to close (`close_side_clients`).
SIDE_CLIENTS_CLOSE_S = 5.0


def stop_repartitioned(problem: str) -> None:  # pragma: no cover - ends the process
    """Stop the worker at once, deciding nothing more: the input topics' partitions changed under
    it (`topics.REPARTITION_HELP`). Exit status 1, as the refusal at the next start: a supervisor
    that starts it again gets that refusal, with the same explanation."""
    log.critical("%s", problem)
    logging.shutdown()
    os._exit(1)


def raw_topic(app: faust.App, *names: str, partitions: int | None = None) -> TopicT:
    """A topic of raw bytes (keys and values): the core decodes, Faust only moves bytes (its events
    are built without Faust's codec registry: `intake.RawSchema`)."""
    return app.topic(
        *names,
        schema=RawSchema(),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )


class QuietMonitor(Monitor):
    """Faust's monitor (its main sensor) without its bookkeeping of every message and event:
    counts, timestamps and a dict per event that nothing reads here (Faust's statistics pages
    are off; the worker's own counts are `/qris/stats` and `/metrics`). Rebalances, commits and
    sends are still recorded."""

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        pass

    def on_stream_event_in(
        self, tp: TP, offset: int, stream: StreamT[Any], event: EventT[Any]
    ) -> dict[str, Any] | None:
        return None

    def on_stream_event_out(
        self, tp: TP, offset: int, stream: StreamT[Any], event: EventT[Any], state: dict[str, Any] | None = None
    ) -> None:
        pass

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        pass

    def track_tp_end_offset(self, tp: TP, offset: int) -> None:
        pass  # called by Faust's `getmany` for every message


def faust_app(settings: Settings) -> faust.App:
    """The Faust app with the worker's consumer, producer and web settings, no agent yet (the
    live benchmark's bare agent runs on this very app, so its ceiling is the worker's)."""
    poll_records = min(settings.batch_max, 5000)  # records per fetch handed to Faust
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h}" for h in settings.bootstrap.split(",")],
        # Faust's consumer and producer as this app, not `faust-<version>` for every app: a
        # broker's quotas and request metrics tell one app's input fetches from another's.
        broker_client_id=settings.app_id,
        broker_credentials=faust_credentials(settings),
        store="memory://",  # Faust holds no state: the store is `statestore.PartitionStore`
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
        broker_max_poll_records=poll_records,
        consumer_max_fetch_size=4 * 1024 * 1024,
        # The agent's buffer pauses fetching at 1/1.25 of its size (mode's pressure ratio) and
        # still takes the rest of the fetch in hand: room for one whole fetch above that mark,
        # or each record past it waits in Faust's slow path (`consumer.py`, `on_buffer_full`).
        stream_buffer_maxsize=max(2 * settings.batch_max, 4096, 6 * poll_records),
        consumer_auto_offset_reset="earliest",
        # Not for standbys (there is no Faust table): with no changelog table and no standby
        # replicas, Faust 0.15 hands the group to aiokafka's round-robin assignor
        # (`transport/drivers/aiokafka.py`), which does not keep partition p of both input
        # topics on one worker, nor fills the router's host map the lookup API forwards by.
        # One standby replica keeps Faust's co-partitioned assignor; it has nothing to stand by.
        table_standby_replicas=1,
        producer_linger_ms=5,
        broker_session_timeout=settings.session_timeout_s,
        # A worker learns that another joins at its next heartbeat: 1 s apart (was 3 s, a tenth of
        # the session timeout), so a second worker started beside the first shares the backlog
        # within about a second instead of after the first took several seconds of it alone.
        broker_heartbeat_interval=min(1.0, settings.session_timeout_s / 10),
        producer_max_batch_size=512 * 1024,
        # Faust 0.15's repaired Cython fast paths (its own opt-in setting): the stream iterator
        # takes an event already waiting in the channel's queue instead of awaiting the queue
        # for each one. The same events in the same order; fewer loop round trips per event.
        cython_optimizations=True,
        # Faust's monitor records every message and event (five calls, a dict per event) for
        # statistics nothing here reads: the app's is one that does not.
        Monitor=QuietMonitor,
    )
    # Faust's consumer loses acked offsets at a revocation and cannot rewind a partition without
    # a committed offset (`consumer.py`): the app's consumer is one that does both, and whose
    # fetch waits `QRIS_FETCH_MAX_WAIT_MS` at most (Faust fixes 1500 ms).
    # The conductor's callbacks with a synchronous fast path the consumer's drain loop tries first
    # (set before anything builds the conductor: `app.topics`).
    app.transport.Conductor = QuickConductor  # type: ignore[misc]  # a ClassVar, set on this transport only
    app.transport.Consumer = guarded_consumer(settings.fetch_max_wait_ms)  # type: ignore[misc]  # a ClassVar, set on this transport only
    # With its statistics page off, Faust serves `/` as {"status": "OK"} whatever the broker
    # says: a health check that lies. Readiness is /qris/ready; `/` answers 404.
    blueprints = app.web.blueprints
    blueprints._enabled = [(p, bp) for p, bp in blueprints._enabled if "production_index" not in str(bp)]
    return app


# How long the burst detector's agent waits to fill a batch of signals (it takes what came by
# then). With holds on, every refund waits for the incidents the detector publishes after each
# batch: the incidents' progress lags the partitions by at least this per round trip, and the
# records waiting meanwhile cost CPU (views of the minutes closing, their state saved with the
# references). 0.5 s made a 100k backlog 1.43x slower to its last decision than 0.05 s
# (`bench/live_throughput.py`, README "Where issue 9's numbers stand", stop 14). Smaller batches
# do not grow the incidents topic (kept for good): a batch that moves no minute and decides no
# incident adds no record (`BurstShell.incidents_records`).
DETECTOR_BATCH_WITHIN_S = 0.05


def build_app(settings: Settings, input_partitions: int | None = None) -> tuple[faust.App, ReconcileShell]:
    app = faust_app(settings)
    inputs = raw_topic(app, settings.payment_topic, settings.ledger_topic)
    outputs = {
        name: raw_topic(app, name) for name in (settings.refund_topic, settings.alert_topic, settings.dead_letter_topic)
    }
    # One partition: the one worker that owns it runs the burst detector over all partitions.
    signals = outputs[settings.signals_topic] = raw_topic(app, settings.signals_topic, partitions=1)
    incidents = raw_topic(app, settings.incidents_topic, partitions=1)

    # On every refund, alert and dead letter: the settings its decision depended on, so a replay
    # from Kafka with others says so (`drivers/livesettings.py`).
    stamp = [(SETTINGS_HEADER, settings_header(settings))]

    async def send(topic: str, key: bytes | None, value: bytes) -> Any:
        if topic == settings.signals_topic:
            return await signals.send(key=key, value=value, partition=0, force=True)
        if topic == settings.incidents_topic:
            return await incidents.send(key=key, value=value, partition=0, force=True)
        headers = stamp if topic != settings.alert_topic else [*stamp, sent_behind(value, time.time())]
        return await outputs[topic].send(key=key, value=value, headers=headers, force=True)

    async def flush() -> None:
        await app.producer.flush()

    # What the worker saw, for /metrics, the lookup API and the dashboard: every output passes by
    # (the shell's decisions as built, `ReconcileShell.on_output`; the detector's as sent).
    watch = WorkerWatch(settings)
    watched_send = watch.wrap_send(send)
    changelog = KafkaChangelog(aiokafka_config(settings), changelog_topic_name(settings.app_id))
    local_dir = Path(settings.data_dir) / settings.app_id / "state"
    store = PartitionStore(
        changelog,
        None if settings.store.startswith("memory") else local_dir,
        flush_every_s=settings.state_flush_s,
        write_buffer_bytes=settings.state_write_buffer_mb * 1024 * 1024,
    )
    # The local DBs are written without RocksDB's log: only a flush (`close`) keeps the last
    # batches on disk. Closed when the app stops, after its agents (and their last commits):
    # mode exits the app's context stack after its children. A worker stopped this way starts
    # again from its DBs and the changelog tail, not the whole changelog.
    app.add_context(contextlib.closing(store))
    # The changelog's clients (its producer and its two readers) close after the store, in the
    # app's async exit stack: mode unwinds it after the sync one, and the agents' last commits,
    # which write to the changelog, come before both.
    app.async_exit_stack.push_async_callback(close_changelog, changelog)
    # Each changelog batch says the consumer-group generation in which its writer took the
    # partition (the store reads Faust's, set at each assignment, when it restores or keeps a
    # partition): a worker the group dropped that still writes is then told from the
    # partition's new owner, which writes over its messages, and stops (`PartitionStore`).
    store.generation = lambda: app.consumer_generation_id
    gaps = BrokerGapFetcher(aiokafka_config(settings))
    # The broker's end offsets asked when needed (idle rule, feed-stall watchdog): Faust's fetched
    # high watermark stays where it was when the broker stops answering this worker's fetches.
    ends = BrokerEndOffsets(aiokafka_config(settings), f"{settings.app_id}-end-offsets")
    # ... and what lies before an idle stream's end offset, when it is a few offsets: a
    # transactional producer's last marker is nothing left to take (its own reader: the
    # watchdog's reads from another task).
    lag_reader = BrokerGapFetcher(aiokafka_config(settings), wait_s=END_OFFSETS_TIMEOUT_S)
    # The input topics' partition counts, asked every INPUT_PARTITIONS_CHECK_S
    # (`watch_input_partitions`).
    partition_counts = BrokerPartitionCounts(aiokafka_config(settings), f"{settings.app_id}-partition-counts")
    shell = ReconcileShell(
        settings,
        store,
        send,
        flush,
        store.commit,
        lambda: app.consumer.assignment(),
        fetch_gap=gaps.fetch,
        restore=store.restore,
        end_offsets=ends.ask,
        fetch_lag=lag_reader.fetch,
    )
    silence = TopicSilence((settings.payment_topic, settings.ledger_topic), lambda: shell.engines)

    def engine_made(eng: PartitionEngine) -> None:
        watch.watch_engine(eng)
        silence.restored(eng)

    shell.on_engine = engine_made
    shell.on_output = watch.on_output
    shell.on_forget = silence.left
    shell.begin_offsets = ends.beginning
    shell.input_partitions = input_partitions or settings.partitions

    def frozen_past_session() -> None:  # (`freeze.py`: a zombie sends nothing late)
        restart_self("frozen_past_session")

    shell.on_frozen = frozen_past_session

    async def durable_before_revocation() -> None:
        # The consumer's commit before a revocation then covers every batch decided so far.
        try:
            await shell.commit()
        except Exception:
            log.critical(
                "cannot persist decided batches before a revocation; exiting before they are acked", exc_info=True
            )
            os._exit(70)

    cast(Any, app.transport.Consumer).before_revocation.append(durable_before_revocation)
    shell.on_idle = silence
    # (Never less than the idle timeout: a stream quiet for less is not silent yet, and would page.)
    stall_s = settings.stall_alert_in_effect_s
    shell.on_stall = ClockStall((settings.payment_topic, settings.ledger_topic), lambda: shell.engines, stall_s)
    metrics = WorkerMetrics(
        watch,
        lambda: shell.engines,
        lambda t, p: _known_end(app, ends, t, p),
        counts=lambda: {
            **shell.counts,
            "state_stale_rebuilds": store.counts["stale_rebuilds"],
            "state_foreign_writes": store.counts["foreign_writes"],
            "state_older_owner_rewrites": store.counts["older_owner_rewrites"],
            "state_superseded_batches": store.counts["superseded_batches"],
            "state_pieced_entries": store.counts["pieced_entries"],
            "detector_internal_errors": bursts.counts["internal_errors"],
            "detector_signals_lost": bursts.counts["signals_lost"],
        },
    )

    @app.agent(inputs, name="reconcile_payments")
    async def reconcile_payments(stream: faust.StreamT[bytes]) -> None:
        """Decode, decide, send: one batch of both input topics at a time."""
        # Faust's `take_events` batches, taken from the agent's channel a batch at a time (`intake.py`).
        # Each batch is acked by the shell's group commit once it is durable, in the background,
        # while the next batches are decided (`ReconcileShell.commit`).
        batches = cast(faust.Stream[bytes], stream)
        try:
            # Refund holds: each batch is taken once the worker is not far past the incidents
            # (`QRIS_MAX_LEAD_S`, `ReconcileShell.paced`).
            async for events in take_batches(
                batches, settings.batch_max, settings.batch_within_s, ack_later=True, before=shell.paced
            ):
                with metrics.batch_seconds.time():
                    await finish_before_ack(shell.process_batch(events, batch_ack(batches, events)))
        finally:
            # What was decided is durable and acked before the agent goes (a stop, a rebalance
            # that restarts agents): otherwise its offsets would not be committed this time.
            await finish_before_ack(shell.commit())

    # The detector's own gap reader: the input's (`gaps`) may be reading a gap meanwhile.
    signal_gaps = BrokerGapFetcher(aiokafka_config(settings))
    bursts = BurstShell(
        settings,
        input_partitions or settings.partitions,
        watched_send,
        flush,
        fetch_gap=signal_gaps.fetch,
        committed=group_committed(app, settings.signals_topic),
    )
    bursts.on_restored = watch.detector_restored
    bursts.loop, bursts.on_frozen = shell.loop, frozen_past_session

    @app.agent(signals, name="score_failure_bursts")
    async def score_failure_bursts(stream: faust.StreamT[bytes]) -> None:
        """The partitions' closed minutes in, failure-burst incidents out."""
        async for events in take_batches(cast(faust.Stream[bytes], stream), 500, DETECTOR_BATCH_WITHIN_S):
            await finish_before_ack(bursts.process_batch(events))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # Faust's signal type wants a sender
    async def stop_snapshot_writer(app_: Any, **kwargs: Any) -> None:
        # After the agents' last batches: the detector's position published (the next start
        # resumes there, at the group's committed offset), then its snapshot producer (kept
        # between snapshots) stops with the worker, not in the middle of a snapshot.
        async with bursts.lock:
            await bursts.publish_progress()
            await bursts.close()

    if settings.max_hold_s > 0:
        following: list[asyncio.Task[Any]] = []

        @app.task  # type: ignore[untyped-decorator]  # Faust's decorator is untyped
        async def follow_incidents() -> None:
            """Every worker reads the incidents topic whole: the detector's decisions and progress
            reach every partition engine (refund holds wait for them)."""
            task = asyncio.current_task()
            if task is not None:
                following.append(task)
            await follow_incidents_topic(settings, shell)

        @app.on_before_shutdown.connect  # type: ignore[arg-type]  # Faust's signal type wants a sender
        async def stop_following_incidents(app_: Any, **kwargs: Any) -> None:
            # Sent after the agents' last batches and before the producer stops: decisions that
            # incidents release are sent by that producer, so the follower stops here, after a
            # release under way (seen: one released as the producer stopped, exit 70 on a clean
            # stop). What it has not released yet, the next start releases from the topic.
            async with shell.committed():  # not in the middle of a release or its commit
                for task in following:
                    task.cancel()

    idle_tick_s = max(1.0, min(settings.idle_timeout_s / 4, 10.0))

    @app.timer(interval=idle_tick_s, name="watch_idle_feeds")  # type: ignore[untyped-decorator]  # Faust's is untyped
    async def watch_idle_feeds() -> None:
        await shell.check_idle_feeds()

    watchdog = RecoveryWatchdog(settings.recovery_stall_s)
    # Checked at least twice per stall period, so a stall is acted on within 1.5 times it.
    watch_tick_s = min(5.0, max(0.5, min(settings.recovery_stall_s, settings.feed_stall_s) / 2))
    watching: list[asyncio.Task[None]] = []
    restoring_partition: list[int | None] = [None]
    started_with = input_partitions or settings.partitions
    input_topics = (settings.payment_topic, settings.ledger_topic)

    async def stop_for_partitions(problem: str, topic: str, found: int) -> None:
        """Say the stop on the alerts topic, where payment operations look (best effort, for at
        most a few seconds: the stop must not wait for a broker that does not answer), then stop."""
        alert = input_repartitioned_alert(alert_text(problem), topic, found, started_with, int(time.time() * 1000))

        async def say() -> None:
            delivered = await send(settings.alert_topic, alert.key, codec.dumps(alert.value))
            await flush()
            # Faust's flush does not raise a refused send: its delivery future does.
            if isinstance(delivered, asyncio.Future):
                await delivered

        try:
            await asyncio.wait_for(say(), STOP_ALERT_TIMEOUT_S)  # (one budget for both)
        except Exception as exc:  # noqa: BLE001 - the stop goes on; the log says the alert was not sent
            log.error("the INPUT_REPARTITIONED alert was not sent to %s: %r", settings.alert_topic, exc)
        stop_repartitioned(problem)

    async def watch_input_partitions() -> None:
        """Stop when an input topic's partition count is not the one the worker started with."""
        check = InputPartitionsCheck(started_with, input_topics)
        while not app.should_stop:  # (stopping: its client is closed, `close_side_clients`)
            await asyncio.sleep(INPUT_PARTITIONS_CHECK_S)
            if app.should_stop:
                return
            try:
                action = check.answered(await partition_counts.ask(input_topics))
            except PartitionCountsUnknown as exc:  # not known now: asked again at the next check
                action = check.not_answered(str(exc))
            if action is None:
                continue
            if action.kind == "stop":
                await stop_for_partitions(action.text, action.topic, action.found)
            log.warning("%s", action.text)

    async def watch_state_recovery() -> None:
        # A plain task, not an app timer: timers start only after Faust's first recovery. It ends
        # with the worker's stop (whose own deadline then watches it): the feed-stall probe's
        # client is closed then (`close_side_clients`).
        while not app.should_stop:
            await asyncio.sleep(watch_tick_s)
            if app.should_stop:
                return
            progress = store.progress
            restoring = progress.partition is not None
            if progress.partition != restoring_partition[0]:
                # Another partition's restore: its own records remaining, its own stall period.
                restoring_partition[0] = progress.partition
                watchdog.stalled(False, 0, time.monotonic())
            if watchdog.stalled(restoring, progress.remaining, time.monotonic()):
                known = progress.remaining < UNKNOWN_REMAINING
                remaining = progress.remaining if known else "end offset not known yet"
                log.critical(
                    "state restore of partition %s made no progress for %.0f s (changelog records remaining: %s); "
                    "restarting",
                    progress.partition,
                    watchdog.stall_s,
                    remaining,
                )
                restart_self("state_restore_stalled")
            await check_feed_stalls()
            now_s = time.monotonic()
            held_s = max(shell.lock.held_for_s(now_s), shell.commit_lock.held_for_s(now_s))
            if held_s >= SHELL_STALL_S:
                # Seen once in the Kafka tier after a restart: the worker decided nothing for two
                # minutes with no error (cause not found). Whatever hangs under the lock (a send,
                # a flush, a state write), a restart resumes from the last commit.
                log.critical("a batch or hand-over of decisions has hung for %.0f s; restarting", held_s)
                restart_self("shell_stalled")

    feeds = FeedStallWatchdog(settings.feed_stall_s)
    signal_feeds = FeedStallWatchdog(min(settings.feed_stall_s, SIGNALS_STALL_S))
    stall_probe = BrokerGapFetcher(aiokafka_config(settings), wait_s=20.0)

    async def feed_positions() -> dict[tuple[str, int], tuple[int | None, int | None]]:
        """Per topic partition assigned here: the next offset the worker would take, and the
        broker's end offset asked now (None: not known; not asked for a partition whose next
        offset moved since the previous check, which is taking records, so not stalled)."""
        out: dict[tuple[str, int], tuple[int | None, int | None]] = {}
        if app.rebalancing or store.progress.partition is not None:
            return out  # a rebalance or a restore under way: its own watchdog
        for tp in app.consumer.assignment():
            taken: int | None = None
            if tp.topic in (settings.payment_topic, settings.ledger_topic):
                taken = shell.next_offset(tp.topic, tp.partition)
            elif tp.topic == settings.signals_topic:
                # Also before the detector is rebuilt after a rebalance (from the committed offset):
                # signals never delivered then leave no later batch to show their gap.
                taken = await bursts.position()
            else:
                continue
            out[(tp.topic, tp.partition)] = (taken, None)
        try:
            end = await ends.ask(feeds.unmoved({tp: taken for tp, (taken, _) in out.items()}))
        except EndOffsetsUnknown:  # no answer: no lag known (the idle rule logs the broker's silence)
            end = {}
        return {tp: (taken, end.get(tp)) for tp, (taken, _) in out.items()}

    async def check_feed_stalls() -> None:
        if shell.lock.locked() or bursts.lock.locked():
            return  # a batch is being taken (a hang under the lock is SHELL_STALL_S's)
        positions = await feed_positions()
        signals_tp = (settings.signals_topic, 0)
        if signal_feeds.stalled({tp: v for tp, v in positions.items() if tp == signals_tp}, time.monotonic()):
            # The detector reads what Faust does not deliver from the broker (no restart).
            _start, end = positions[signals_tp]
            assert end is not None
            if not await bursts.catch_up(end):  # nothing there, or no answer: another period
                signal_feeds.confirmed_empty(signals_tp, time.monotonic())
        positions.pop(signals_tp, None)
        for topic, partition in feeds.stalled(positions, time.monotonic()):
            start, end = positions[(topic, partition)]
            assert start is not None and end is not None
            try:
                # Its first offsets, as many as `only_markers` reads: markers only there are no stall.
                first = min(end, start + MARKERS_PROBE_OFFSETS)
                markers = await only_markers(stall_probe.fetch, topic, partition, start, first)
            except Exception:  # noqa: BLE001 - the broker did not answer: not Faust's stall
                log.warning("%s[%d]: cannot read offsets %d.. to check a stall", topic, partition, start)
                continue
            if markers:  # transaction markers only: nothing to take
                feeds.confirmed_empty((topic, partition), time.monotonic())
                continue
            # Faust stopped handing this partition over (seen after restarts and rebalances,
            # cause not found): a fresh process resumes from the last commit, exactly.
            log.critical(
                "%s[%d]: records from offset %d are on the broker but none was taken for %.0f s; restarting",
                topic,
                partition,
                start,
                feeds.stall_s,
            )
            restart_self("feed_stalled")

    def owned_inputs(tps: Any) -> set[int]:
        return {tp.partition for tp in tps or () if tp.topic in (settings.payment_topic, settings.ledger_topic)}

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # Faust's signal type wants a sender
    async def on_assigned(app_: Any, assigned: Any = None, **kwargs: Any) -> None:
        watch.rebalances += 1
        owned = owned_inputs(assigned)
        if beyond := assigned_beyond(owned, started_with):
            await stop_for_partitions(
                f"input partitions {beyond} were assigned to this worker, which started with {started_with}: "
                f"the input topics got partitions while it ran; it stops before deciding any reference split "
                f"by the change. {REPARTITION_HELP}",
                settings.payment_topic,
                beyond[-1] + 1,
            )
        watch.keep_partitions(owned)
        if not watching:
            watching.append(asyncio.ensure_future(watch_input_partitions()))
            watching.append(asyncio.ensure_future(watch_state_recovery()))
            watching.append(asyncio.ensure_future(watch_for_freezes(shell.loop, frozen_past_session)))
            try:
                signal.signal(signal.SIGCONT, on_sigcont(shell.loop, frozen_past_session))
            except ValueError:  # not the main thread: the freeze watch's checks still apply
                log.warning("no SIGCONT handler (not in the main thread): a stop is found by the freeze watch only")
        async with shell.committed():  # never in the middle of a batch, nothing left to write
            dropped = await drop_moved_partitions(shell, store, owned)
        log.info(
            "assigned input partitions %s; engines dropped %s, kept %s", sorted(owned), dropped, sorted(shell.engines)
        )
        await shell.release_held_back()  # the kept engines: what incidents taken meanwhile release
        async with bursts.lock:
            bursts.forget()
            # Under the detector's lock, with `forget` (a rebuild finishing between the two would
            # show incidents of a detector forgotten here). Shown again if the detector is
            # rebuilt here (`bursts.on_restored`).
            watch.detector_moved()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # Faust's signal type wants a sender
    async def on_recovered(app_: Any, **kwargs: Any) -> None:
        # Restore the engines of every input partition assigned here now, not at their next
        # record, so the lookup API, /metrics and the dashboard see a quiet partition's state
        # too (a batch would restore them the same way).
        try:
            async with shell.lock:
                todo = [p for p in sorted(owned_inputs(app.consumer.assignment())) if p not in shell.engines]
                for p in todo:
                    await store.restore(p)
                for p in todo:  # all at once, without a pause: the pages see all of them or none
                    shell.engine(p)
            if shell.released_at_restore:  # sent and kept now, not at the next input batch
                await shell.commit()
        except StateVersionError as exc:
            stop_unreadable_state(str(exc))
        except Exception:
            log.critical("cannot restore the state of an assigned partition; restarting", exc_info=True)
            restart_self("state_restore_failed")
        # The cycles that died frozen since the last rebalance (the assignment this one replaced):
        # collected now, before the streams resume, while no record is being taken anyway.
        reclaimed = reclaim_frozen_cycles()
        if reclaimed is not None:
            watch.gc_reclaimed(reclaimed.unreachable, reclaimed.seconds)
            log.info(
                "rebalance done: %d unreachable objects collected, the process held %.3f s",
                reclaimed.unreachable,
                reclaimed.seconds,
            )

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # Faust's signal type wants a sender
    async def on_revoked(app_: Any, revoked: Any = None, **kwargs: Any) -> None:
        # Incidents release nothing until the new assignment (`on_assigned`): a partition that
        # moves is its new owner's to decide. Then: waits for a batch in flight and commits what
        # is decided (Faust waited for its acks already); the engines stay until the new
        # assignment says which moved.
        shell.holding_back = True
        log.info("partitions revoked: incidents release nothing until the next assignment")
        async with shell.committed():
            pass
        async with bursts.lock:
            await bursts.hand_over()
            # Under the detector's lock, with `hand_over`'s `forget` (a rebuild finishing between the two would
            # show incidents of a detector forgotten here). Shown again if the detector is
            # rebuilt here (`bursts.on_restored`).
            watch.detector_moved()

    @app.page("/qris/stats")
    async def stats(web: Any, request: Any) -> Any:
        return web.json(
            {**shell.stats(), "state": dict(store.counts), "bursts": bursts.stats(), "self_restarts": self_restarts()}
        )

    @app.page("/qris/ready")
    async def ready(web: Any, request: Any) -> Any:
        """200 when the worker reaches the broker and owns input partitions; else 503 and why."""
        reason = await not_ready_reason(app, settings, restoring=store.progress.partition is not None)
        if reason:
            return web.json({"ready": False, "reason": reason}, status=503)
        return web.json({"ready": True})

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # Faust's signal type wants a sender
    async def close_side_clients(app_: Any, **kwargs: Any) -> None:
        # The broker clients kept beside Faust's (gap reads, end offsets, partition counts), each
        # started on first use: disconnected with the worker, not dropped with the process. All
        # at once and for a few seconds at most: a broker that does not answer must not hold the
        # stop. One used again after this starts again, and goes with the process.
        sides = (gaps, ends, lag_reader, partition_counts, signal_gaps, stall_probe)

        async def close_all() -> list[Any]:
            # The idle rule's timer runs until Faust stops its tasks, after this: an idle check
            # under way (a few lag reads, half a second each) would start the end offsets' and
            # the lag reader's clients again as they close.
            await shell.stop_idle_checks()
            return await asyncio.gather(*(side.close() for side in sides), return_exceptions=True)

        try:
            done = await asyncio.wait_for(close_all(), SIDE_CLIENTS_CLOSE_S)
        except TimeoutError:
            log.warning("the side broker clients were not closed within %g s at shutdown", SIDE_CLIENTS_CLOSE_S)
            return
        for side, result in zip(sides, done, strict=True):
            if isinstance(result, BaseException):
                log.debug("closing %s at shutdown: %r", type(side).__name__, result)

    add_pages(app, settings, shell, watch, metrics)
    return app, shell


async def close_changelog(changelog: KafkaChangelog) -> None:
    """The state changelog's broker clients closed at the stop, for a few seconds at most (as
    `close_side_clients`): a broker that does not answer must not hold the stop, and nothing of the
    close may fail it (the local DBs are flushed already)."""
    try:
        await asyncio.wait_for(changelog.close(), SIDE_CLIENTS_CLOSE_S)
    except TimeoutError:
        log.warning(
            "the state changelog's broker clients were not closed within %g s at shutdown", SIDE_CLIENTS_CLOSE_S
        )
    except Exception as exc:  # noqa: BLE001  # the process exits next and drops them all the same
        log.warning("closing the state changelog's broker clients at shutdown: %r", exc)


async def drop_moved_partitions(shell: ReconcileShell, store: PartitionStore, owned: Set[int]) -> list[int]:
    """After an assignment, drop the engines and local state of the partitions that moved away;
    an engine of a partition still owned stays unless its changelog grew meanwhile (another
    worker wrote to it: this one missed an assignment), so its next batch reads the tail."""
    dropped = []
    for p in sorted(set(shell.engines) | set(store.locals)):
        if p not in owned or not await store.is_current(p):
            shell.forget_partition(p)
            store.release(p)
            dropped.append(p)
    return dropped


def _highwater(app: faust.App, topic: str, partition: int) -> int | None:
    try:
        return int(app.consumer.highwater(TP(topic, partition)))
    except Exception:  # not assigned here, or not fetched yet
        return None


def _known_end(app: faust.App, ends: BrokerEndOffsets, topic: str, partition: int) -> int | None:
    """The furthest end offset known of a topic partition: Faust's fetched high watermark or the
    broker's latest answer to `ends` (larger while the broker holds this worker's fetches back)."""
    known = [x for x in (_highwater(app, topic, partition), ends.latest.get((topic, partition))) if x is not None]
    return max(known, default=None)


async def not_ready_reason(
    app: faust.App, settings: Settings, timeout_s: float = 3.0, restoring: bool = False
) -> str | None:
    """Why the worker is not ready to process records, or None: a metadata request to the
    broker (with the worker's credentials) must answer within `timeout_s`, no rebalance or
    state restore may be under way, and an input partition must be assigned here."""
    producer = getattr(app.producer, "_producer", None)
    if producer is None:
        return "the Kafka producer has not started"
    try:
        await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout_s)
    except Exception as exc:  # noqa: BLE001 - any failure means no broker
        return f"no answer from the broker {settings.bootstrap}: {type(exc).__name__}"
    if app.rebalancing:
        return "the consumer group is rebalancing"
    if restoring:
        return "partition state is being restored from the changelog"
    inputs = {settings.payment_topic, settings.ledger_topic}
    if not any(tp.topic in inputs for tp in app.consumer.assignment()):
        return "no input partition is assigned to this worker"
    return None


class _Worker(faust.Worker):
    json_logs = False
    stop_deadline: StopDeadline | None = None  # set by run_worker

    # mode's Worker: a SIGTERM or SIGINT schedules the stop here; `on_worker_shutdown` runs when
    # the worker's start ends, for any reason. Either starts the stop's deadline.
    def _schedule_shutdown(self, sig: signal.Signals) -> None:
        if self.stop_deadline is not None:
            self.stop_deadline.arm(f"signal {sig.name}")
        super()._schedule_shutdown(sig)

    def on_worker_shutdown(self) -> None:
        if self.stop_deadline is not None:
            self.stop_deadline.arm("the worker's end")
        super().on_worker_shutdown()

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        from .logs import drop_request_content, use_json

        if self.json_logs:
            use_json(logger)
        drop_request_content()
        # Client libraries log every message's key and value at DEBUG (customer data):
        # never below INFO, whatever the worker's level. It also spares a log record per send.
        for name in ("aiokafka", "kafka", "faust", "mode"):
            logging.getLogger(name).setLevel(max(level, logging.INFO))
        super().on_setup_root_logger(logger, level)
        from .. import buildinfo

        # Which code runs (the sources or `make compiled`'s copy), first thing in the log.
        log.info("%s", buildinfo.describe())


def private_data_dir(data_dir: Path, app_id: str) -> None:
    """Create the worker's data directory (Faust creates only the last level) and make what
    holds the local state the worker's user's only: RocksDB holds every payment's account id
    and refunds, and writes its files 0644 under the usual umask, readable by every local user.
    A data directory this call creates is made 0700; one that exists already (a shared /tmp, a
    group's directory, a home directory, the current one) is left as it is, and the worker's
    own `<data_dir>/<app_id>` (its RocksDB tables) is made 0700 inside it."""
    own = data_dir / app_id
    try:
        created = not data_dir.exists()
        data_dir.mkdir(parents=True, exist_ok=True)
        if created:
            data_dir.chmod(0o700)
        own.mkdir(mode=0o700, exist_ok=True)
        own.chmod(0o700)
    except OSError as exc:
        log.warning("cannot make %s private to the worker's user (%s)", own, exc.strerror or exc)


def prepare_process(settings: Settings) -> None:
    """What the worker process sets before Faust starts (the live benchmark's bare agent too):
    its data directory, uvloop, and the cyclic garbage collector's pace."""
    private_data_dir(Path(settings.data_dir), settings.app_id)
    if settings.uvloop:
        import uvloop

        uvloop.install()  # before Faust makes its loop: about a quarter more records/s here
    young_collections_freeze_survivors()


# Objects allocated (less those freed) between two collections of the youngest generation.
YOUNG_GENERATION_OBJECTS = 10_000


def young_collections_freeze_survivors() -> None:
    """The cyclic garbage collector of a live worker: the youngest generation is collected every
    10,000 allocations, and what survives it is frozen (`gc.freeze`), never walked again.

    The engines keep almost every object they allocate (a payment's state until its retention,
    the waiting records, the burst signals), and each collection walks every object of its
    generations: with the youngest every 100,000 allocations, a worker taking 10,000 records/s
    stopped its event loop 60-220 ms every 2 s for young collections that found nothing, and
    2.9-3.2 s every 100 s or so for the middle generation's 5 million objects (README,
    "What survives a young collection is frozen"). Frozen objects are still freed when their
    last reference goes; only a reference cycle that dies after surviving a young collection waits
    for the next rebalance to be collected (`reclaim_frozen_cycles`; 84 objects after 1.2 million
    records, 108-218 a rebalance). A full collection (Faust's consumer
    makes one in `wait_empty`, at a revocation with events not yet acked) walks only what is not
    frozen: 5-6 s was measured for one at a worker's stop."""
    gc.set_threshold(YOUNG_GENERATION_OBJECTS, 50, 100)
    if _freeze_after_young not in gc.callbacks:
        gc.callbacks.append(_freeze_after_young)


def _freeze_after_young(phase: str, info: dict[str, int]) -> None:
    # (Every generation is frozen: the older ones, empty, never reach their thresholds.)
    if phase == "stop":
        gc.freeze()


@dataclass(frozen=True)
class Reclaimed:
    """What one `reclaim_frozen_cycles` did: the unreachable objects its full collection found
    (`gc.collect`'s count), and the seconds it held the process."""

    unreachable: int
    seconds: float


# The most frozen objects `reclaim_frozen_cycles` walks: about 0.6 µs each holding the GIL, so
# 10 million hold the process about 6 s. Far more would near the group's session timeout (30 s
# by default): the freeze watch would restart the worker, whose next rebalance would collect again.
RECLAIM_MAX_FROZEN = 10_000_000


def reclaim_frozen_cycles(
    clock: Callable[[], float] = time.perf_counter, max_frozen: int = RECLAIM_MAX_FROZEN
) -> Reclaimed | None:
    """Collect the reference cycles that died after they were frozen, then freeze what lives
    again: `gc.unfreeze()`, a full collection, `gc.freeze()`. None, and nothing done, when the
    worker's collector is not in use (`young_collections_freeze_survivors`).

    Each rebalance leaves such cycles (aiokafka's assignments and partition states, finished
    futures, Faust's spans: 108-218 objects, docs/known-limits-history.md), which the freeze keeps for
    good otherwise. The full collection walks every object of the process holding the GIL, so
    every thread waits for it (the event loop, the consumer's heartbeats, the freeze watch's
    ticker): 0.1-0.7 s with 0.2-1.2 million objects, 2.8-2.9 s with 4.9 million (400,000
    references in state; `bench/rebalance_collection.py`). The worker calls it once a rebalance's
    restore is done (`on_recovered`), before its streams resume, not on any batch's path.
    Automatic collections are off meanwhile: one made by another thread between the unfreeze
    and the full collection would freeze everything again (`_freeze_after_young`), leaving the
    full collection nothing to find. More than `max_frozen` frozen objects: nothing done (logged),
    the cycles kept until a rebalance with fewer."""
    if _freeze_after_young not in gc.callbacks:
        return None
    frozen = gc.get_freeze_count()
    if frozen > max_frozen:
        log.warning("rebalance done: %d frozen objects, too many to collect now (at most %d)", frozen, max_frozen)
        return None
    start_s = clock()  # (before the disable: nothing between it and the `try` may raise)
    enabled = gc.isenabled()
    gc.disable()
    try:
        gc.unfreeze()
        unreachable = gc.collect()
    finally:
        gc.freeze()  # (the callback froze at the collection's end already; not if it raised)
        if enabled:
            gc.enable()
    return Reclaimed(unreachable, clock() - start_s)


def run_worker(settings: Settings) -> int:
    prepare_process(settings)
    from ..topics import ensure_state_changelog

    partitions = _input_partitions(settings)
    try:
        ensure_state_changelog(settings, partitions or settings.partitions)
    except PartitionsRefused as refused:
        send_refusal_alert(settings, refused)
        raise
    app, _shell = build_app(settings, partitions)
    _Worker.json_logs = settings.log_format.lower() == "json"
    worker = _Worker(app, loglevel=settings.log_level.upper(), override_logging=True)
    worker.stop_deadline = deadline = StopDeadline(settings.stop_timeout_s)
    try:
        worker.execute_from_commandline()
    finally:
        deadline.cancel()  # stopped in time (or in a test's process, which goes on)
    return 0


def _input_partitions(settings: Settings) -> int | None:
    """The input topics' partition count: the burst detector waits for every partition."""
    from ..topics import check_copartitioned

    try:
        return check_copartitioned(settings)
    except SystemExit as exc:
        log.warning("%s; burst detection assumes QRIS_PARTITIONS=%d", exc, settings.partitions)
        return None
