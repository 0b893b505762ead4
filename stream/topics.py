"""Creating and checking the contract's topics on a broker (kafka-python admin).

The two input topics must be co-partitioned (same partition count); outputs get the same count,
except the internal signals, incidents and snapshots topics, which have one partition. The
worker's state changelog (`<app_id>-state-changelog`, compacted) has the input topics' count.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from .security import kafka_python_config, topic_configs
from .settings import Settings

log = logging.getLogger(__name__)

# How every reader of the input topics reads them (the worker's consumer, its gap and end-offset
# readers, dump and replay from Kafka): a transaction's records once it committed, never an
# aborted one's, and end offsets are the last stable offset.
INPUT_ISOLATION = "read_committed"


def topic_names(settings: Settings) -> list[str]:
    return [
        settings.payment_topic,
        settings.ledger_topic,
        settings.refund_topic,
        settings.alert_topic,
        settings.dead_letter_topic,
        settings.signals_topic,
        settings.incidents_topic,
        settings.snapshots_topic,
    ]


def signals_topic(name: str, settings: Settings | None = None) -> NewTopic:
    """The burst detector's input: one partition (one detector), kept for good (it is the
    detector's state, replayed when a worker takes it over)."""
    s = settings or Settings()
    return NewTopic(
        name,
        num_partitions=1,
        replication_factor=s.replication_factor,
        topic_configs={"retention.ms": "-1", **topic_configs(s)},
    )


def admin_client(settings: Settings, **config: Any) -> KafkaAdminClient:
    """kafka-python's admin client with the settings' security (`config`: more of its options).

    kafka-python 3 starts the client's network thread before it bootstraps: a broker it cannot
    reach in `bootstrap_timeout_ms` raises from the constructor, leaving that thread and its
    sockets running for ever (one more at every call of a process that asks again, as tests and
    tools do). They are stopped here before the error goes on."""
    admin = KafkaAdminClient.__new__(KafkaAdminClient)
    try:
        admin.__init__(**kafka_python_config(settings), client_id="qris-guard-admin", **config)
    except BaseException:
        for part, stop in (("_client", "close"), ("_net", "stop"), ("_metrics", "close")):
            with contextlib.suppress(Exception):
                if (obj := getattr(admin, part, None)) is not None:
                    getattr(obj, stop)()
        raise
    return admin


def incidents_topic(name: str, settings: Settings | None = None) -> NewTopic:
    """The detector's incident decisions and progress, read whole by every worker (refund holds):
    one partition, kept for good (small: one record per signals batch of the detector that moves
    its progress or decides an incident)."""
    s = settings or Settings()
    return NewTopic(
        name,
        num_partitions=1,
        replication_factor=s.replication_factor,
        topic_configs={"retention.ms": "-1", **topic_configs(s)},
    )


def snapshots_topic(name: str, settings: Settings | None = None) -> NewTopic:
    """The burst detector's snapshots: one partition, compacted (only the latest matters),
    records up to 16 MiB (a snapshot holds every tracked scope's model)."""
    s = settings or Settings()
    return NewTopic(
        name,
        num_partitions=1,
        replication_factor=s.replication_factor,
        topic_configs={
            **topic_configs(s),
            "cleanup.policy": "compact",
            "max.message.bytes": str(16 * 1024 * 1024),
        },
    )


def state_changelog_topic(settings: Settings, partitions: int) -> NewTopic:
    """The worker's state changelog: one partition per input partition, compacted (the latest
    value of every key is the state), written only by the worker (`worker/statestore.py`).

    The worker rewrites every reference a batch changed, so nearly all of the log is values
    written over (99.6% in a 19-day soak: 833,552 messages for about 1,000 live keys). Kafka
    compacts only closed segments, and by default a segment closes at 1 GiB or after 7 days: a
    changelog then grows by days of rewrites, and a restore from an empty disk reads them all.
    Segments close at 128 MiB or after an hour here."""
    from .worker.statestore import changelog_topic_name

    return NewTopic(
        changelog_topic_name(settings.app_id),
        num_partitions=partitions,
        replication_factor=settings.replication_factor,
        topic_configs={
            **topic_configs(settings),
            "cleanup.policy": "compact",
            "segment.bytes": str(128 * 1024 * 1024),
            "segment.ms": str(3600 * 1000),
        },
    )


def ensure_state_changelog(settings: Settings, partitions: int, *, timeout_s: float = 30.0) -> None:
    """Create the state changelog if missing; raise SystemExit if it exists with another count
    (a changelog partition holds exactly one input partition's state)."""
    topic = state_changelog_topic(settings, partitions)
    admin = admin_client(settings)
    try:
        if topic.name not in set(admin.list_topics()):
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker raced us to it
                admin.create_topics([topic], timeout_ms=int(timeout_s * 1000))
        deadline = time.monotonic() + timeout_s
        while (count := partition_counts(admin, [topic.name]).get(topic.name)) is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"the state changelog {topic.name} was not created in {timeout_s:.0f} s")
            time.sleep(0.2)
    finally:
        admin.close()
    if count != partitions:
        raise PartitionsRefused(
            changelog_mismatch(topic.name, count, partitions), settings.payment_topic, partitions, count
        )


# What an operator reads when the input topics' partition count changed under kept state (the
# worker refuses at start, and stops when it sees the change while it runs).
REPARTITION_HELP = (
    "Kafka's default partitioner moved about half of the references to other partitions, so a payment "
    "in flight at the change has its debit on one partition and its settlement or reversal on another; "
    "each partition decides alone, and a settlement that lands on the other one cancels nothing: the "
    "debit is refunded at its deadline although the payment settled. Do not add partitions to the state "
    "changelog or start with a new QRIS_APP_ID to get past this (both decide the split references wrongly, "
    "without a warning). The input topics' partition count is fixed for the life of their data: to grow, "
    "create a new co-partitioned set of input topics with the new count (`qris-guard topics` with "
    "QRIS_PARTITIONS and new topic names), copy the records into it keyed by reference, and start a worker "
    "with a new QRIS_APP_ID on it; replaying gives the same refund_ids, which the refund service pays once "
    "(README, 'Input partitions are fixed')"
)

# The same in an INPUT_REPARTITIONED alert, whose summary is cut at 1,000 characters: the whole
# help above (927) left "how to grow" cut in the middle of its last step.
REPARTITION_ALERT_HELP = (
    "Kafka moved about half of the references to other partitions: a payment in flight has its debit on "
    "one and its settlement on another, and settled payments are refunded. Do not add partitions to the "
    "state changelog or start with a new QRIS_APP_ID on these topics. To grow: a new co-partitioned set "
    "of input topics with the new count, the records copied into it keyed by reference, and a worker with "
    "a new QRIS_APP_ID on it (README, 'Input partitions are fixed')"
)


def alert_text(problem: str) -> str:
    """A refusal's or stop's explanation as its INPUT_REPARTITIONED alert says it (shorter help).

    >>> len(alert_text(changelog_mismatch("qris-guard-state-changelog", 4, 8))) < 900
    True
    """
    return problem.replace(REPARTITION_HELP, REPARTITION_ALERT_HELP)


class PartitionsRefused(SystemExit):
    """The worker's refusal to start, or its stop while it runs, because an input topic's
    partition count is not the one its state was kept for (exit status 1 with `text`, as any
    SystemExit with a message). `topic` has `found` partitions where `expected` were: what the
    INPUT_REPARTITIONED alert says (`send_refusal_alert`)."""

    def __init__(self, text: str, topic: str, found: int, expected: int) -> None:
        super().__init__(text)
        self.text, self.topic, self.found, self.expected = text, topic, found, expected


def send_refusal_alert(settings: Settings, refused: PartitionsRefused, *, timeout_s: float = 10.0) -> None:
    """Say a refusal to start on the alerts topic, where payment operations look, before the
    worker exits: its log and exit status reach whoever runs it, not them. Best effort: a broker
    that does not take it in `timeout_s` leaves the log line alone (said there)."""
    from kafka import KafkaProducer

    from .core import codec
    from .core.alerts import input_repartitioned_alert
    from .drivers.livesettings import SETTINGS_HEADER, settings_header

    alert = input_repartitioned_alert(
        alert_text(refused.text), refused.topic, refused.found, refused.expected, int(time.time() * 1000)
    )
    # One budget for the whole: kafka-python's own waits are 30 s to bootstrap and 60 s for a
    # topic's metadata (a broker gone, an alerts topic it does not have).
    deadline = time.monotonic() + timeout_s
    ms = int(timeout_s * 1000)
    producer = None
    try:
        producer = KafkaProducer(
            **kafka_python_config(settings),
            acks="all",
            client_id=f"{settings.app_id}-refusal",
            bootstrap_timeout_ms=ms,
            max_block_ms=ms,
            request_timeout_ms=ms,
        )
        future = producer.send(
            settings.alert_topic,
            key=alert.key,
            value=codec.dumps(alert.value),
            headers=[(SETTINGS_HEADER, settings_header(settings))],
        )
        future.get(timeout=max(0.0, deadline - time.monotonic()))
    except Exception as exc:  # noqa: BLE001 - the refusal itself goes on; the log says it was not sent
        log.error("the INPUT_REPARTITIONED alert was not sent to %s: %s", settings.alert_topic, exc)
    finally:
        if producer is not None:
            producer.close(timeout=max(0.0, deadline - time.monotonic()))


def changelog_mismatch(changelog: str, count: int, inputs: int) -> str:
    """The worker's refusal when the state changelog and the input topics differ in count.

    >>> changelog_mismatch("app-state-changelog", 4, 8)[:112]
    'the input topics have 8 partitions but the state (app-state-changelog) was kept for 4: partitions were added to '
    """
    if count < inputs:
        return (
            f"the input topics have {inputs} partitions but the state ({changelog}) was kept for {count}: "
            f"partitions were added to the input topics. {REPARTITION_HELP}"
        )
    return (
        f"the state changelog {changelog} has {count} partitions, the input topics {inputs}: "
        "it must have one per input partition (were the input topics recreated with fewer partitions? "
        "then their records are not those the state was kept for: use a new QRIS_APP_ID)"
    )


def partitions_changed(started_with: int, counts: Mapping[str, int | None], topics: Iterable[str]) -> str | None:
    """Why a running worker must stop: an input topic's partition count is not the one it started
    with (`counts` as the broker answered; a topic it did not answer for, or answered for with no
    partitions, is not judged: a Kafka topic has at least one). None if all is as at the start.

    >>> partitions_changed(4, {"p": 4, "l": 4}, ("p", "l")) is None
    True
    >>> partitions_changed(4, {"p": 4, "l": 8}, ("p", "l"))[:73]
    'the input topics changed partition count while the worker ran (l: 4 -> 8)'
    >>> partitions_changed(4, {"p": 0, "l": None}, ("p", "l")) is None
    True
    """
    changed = {t: n for t in topics if (n := counts.get(t)) and n != started_with}
    if not changed:
        return None
    said = ", ".join(f"{t}: {started_with} -> {n}" for t, n in changed.items())
    if all(n > started_with for n in changed.values()):
        why = f"it stops before deciding any reference split by the change. {REPARTITION_HELP}"
    else:  # (Kafka cannot take partitions away: the topics were deleted and created again)
        why = (
            "fewer partitions means the topics were recreated: their records are not those the state was kept "
            "for; it stops (start it with a new QRIS_APP_ID on the new topics)"
        )
    return f"the input topics changed partition count while the worker ran ({said}); {why}"


def assigned_beyond(owned: Iterable[int], started_with: int) -> list[int]:
    """Input partitions assigned to this worker that did not exist when it started (the topics
    got partitions while it ran: Kafka's group assigns them once the client's metadata shows them).

    >>> assigned_beyond({0, 1, 5, 4}, 4), assigned_beyond({0, 3}, 4)
    ([4, 5], [])
    """
    return sorted(p for p in owned if p >= started_with)


# Checks in a row without every input topic's count after which the running worker says that
# its check is off (a minute and an hour, a check every 10 s): no answer never stops it.
UNANSWERED_WARNINGS_AT = (6, 360)


class CheckAction(NamedTuple):
    """What the running worker does after a check: stop (exit status 1), or log a warning. A stop
    names the first input topic whose count changed and its count now."""

    kind: Literal["stop", "warn"]
    text: str
    topic: str = ""
    found: int = 0


@dataclass
class InputPartitionsCheck:
    """The running worker's check that its input topics keep the partition count it started with,
    fed one broker answer (or its absence) at a time; it returns what to do and does nothing.

    >>> check = InputPartitionsCheck(4, ("p", "l"))
    >>> check.answered({"p": 4, "l": 4}) is None
    True
    >>> [check.not_answered("RequestTimedOutError") for _ in range(6)][-1].kind
    'warn'
    >>> check.answered({"p": 4, "l": 8}).kind
    'stop'
    """

    started_with: int
    topics: tuple[str, ...]
    unanswered_in_a_row: int = 0

    def answered(self, counts: Mapping[str, int | None]) -> CheckAction | None:
        """After the broker answered with `counts`: stop if a count changed; a topic missing from
        the answer (or with no partitions) makes the check one not answered."""
        if (problem := partitions_changed(self.started_with, counts, self.topics)) is not None:
            topic, found = next(
                (t, n) for t in self.topics if (n := counts.get(t)) and n != self.started_with
            )  # fmt: skip
            return CheckAction("stop", problem, topic, found)
        missing = [t for t in self.topics if not counts.get(t)]
        if missing:
            return self.not_answered(f"no partitions known for {', '.join(missing)}")
        self.unanswered_in_a_row = 0
        return None

    def not_answered(self, why: str) -> CheckAction | None:
        """After a check the broker did not answer (`why`): a warning at the counts of
        `UNANSWERED_WARNINGS_AT` in a row, else nothing."""
        self.unanswered_in_a_row += 1
        if self.unanswered_in_a_row not in UNANSWERED_WARNINGS_AT:
            return None
        return CheckAction(
            "warn",
            f"the input topics' partition counts not known for {self.unanswered_in_a_row} checks in a row ({why}): "
            "a change would not be seen",
        )


def create_topics(settings: Settings, *, timeout_s: float = 30.0) -> dict[str, int]:
    """Create missing topics with `settings.partitions` partitions; return every topic's count."""
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(
                name,
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                topic_configs=topic_configs(settings),
            )
            for name in topic_names(settings)
            if name not in existing
            and name not in (settings.signals_topic, settings.incidents_topic, settings.snapshots_topic)
        ]
        if settings.signals_topic not in existing:
            new.append(signals_topic(settings.signals_topic, settings))
        if settings.incidents_topic not in existing:
            new.append(incidents_topic(settings.incidents_topic, settings))
        if settings.snapshots_topic not in existing:
            new.append(snapshots_topic(settings.snapshots_topic, settings))
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker raced us to it
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
        deadline = time.monotonic() + timeout_s
        while True:
            counts = partition_counts(admin, topic_names(settings))
            if all(counts.get(t) for t in topic_names(settings)) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        admin.close()
    # The worker would create it too; made here with the input topics' count as it is now.
    partitions = counts.get(settings.payment_topic) or settings.partitions
    ensure_state_changelog(settings, partitions, timeout_s=timeout_s)
    counts[state_changelog_topic(settings, partitions).name] = partitions
    return counts


def delete_topics_with_prefix(settings: Settings, *prefixes: str, timeout_s: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with one of `prefixes` (a benchmark's or a test's
    own runs: inputs, outputs, changelog and Faust's topics are all named after them); return
    their names. For tooling on a shared broker, whose heap and start-up time grow with every
    partition it keeps: never called by the worker."""
    if not prefixes or not all(prefixes):
        raise ValueError("an empty prefix would delete every topic")
    admin = admin_client(settings)
    try:
        mine = sorted(t for t in admin.list_topics() if t.startswith(prefixes))
        if mine:
            admin.delete_topics(mine, timeout_ms=int(timeout_s * 1000))
    finally:
        admin.close()
    return mine


def broker_holds(settings: Settings) -> tuple[int, int]:
    """How many topics and partitions the broker holds: printed by the benchmarks beside their
    numbers (a broker left with thousands of partitions by earlier runs is a slower machine)."""
    admin = admin_client(settings)
    try:
        names = admin.list_topics()
        partitions = sum(len(d.get("partitions") or ()) for d in admin.describe_topics(names)) if names else 0
    finally:
        admin.close()
    return len(names), partitions


def partition_counts(admin: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for desc in admin.describe_topics(topics):
        if not desc.get("error_code") and desc.get("partitions"):
            out[desc.get("name") or desc["topic"]] = len(desc["partitions"])
    return out


def check_outputs(settings: Settings) -> None:
    """Raise SystemExit if an output topic (refunds, alerts, dead letters) is missing. A broker
    with `auto.create.topics.enable` creates a mistyped one at the first send, and the refunds
    go where the refund service does not read, with one ERROR in the worker's log."""
    wanted = [settings.refund_topic, settings.alert_topic, settings.dead_letter_topic]
    admin = admin_client(settings)
    try:
        counts = partition_counts(admin, wanted)
    finally:
        admin.close()
    missing = [t for t in wanted if t not in counts]
    if missing:
        raise SystemExit(
            f"output topics missing on {settings.bootstrap}: {', '.join(missing)}; a mistyped name would send "
            "refunds and alerts where nobody reads them: check the QRIS_*_TOPIC settings, and create the "
            "topics (`qris-guard topics`, or `qris-guard worker --create-topics`)"
        )


def check_copartitioned(settings: Settings) -> int:
    """The input topics' common partition count; raises if they differ or are missing."""
    admin = admin_client(settings)
    try:
        counts = partition_counts(admin, [settings.payment_topic, settings.ledger_topic])
    finally:
        admin.close()
    p, l = counts.get(settings.payment_topic), counts.get(settings.ledger_topic)  # noqa: E741
    if p is None or l is None:
        raise SystemExit(f"input topics missing on {settings.bootstrap}: run `qris-guard topics` first ({counts})")
    if p != l:
        # Partitions are only ever added: the topic with more is the one that got them (what the
        # running worker's stop named too, `InputPartitionsCheck`: one alert id for one change).
        grown, found, other = (settings.payment_topic, p, l) if p > l else (settings.ledger_topic, l, p)
        raise PartitionsRefused(
            f"input topics are not co-partitioned: {settings.payment_topic}={p}, {settings.ledger_topic}={l} "
            f"(the contract keys both by reference with the same count; if partitions were added to one of them: "
            f"{REPARTITION_HELP})",
            grown,
            found,
            other,
        )
    return p
