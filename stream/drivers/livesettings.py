"""The settings that change decisions, as the live worker stamps them on what it sends, and the
check that a replay from Kafka decides with the same.

A replay run with another timeout, lateness, retention, clock guard, hold limits, detector
threshold or list of the ledger's own accounts than the live worker's decides differently, and
nothing in the decisions says why. The worker puts these settings on every refund, alert and
dead letter it sends (the Kafka header `qris.settings`, compact JSON of `QRIS_*` name to value);
`replay --from-kafka` and `trace --from-kafka` read the newest record of each partition of those
topics and warn, naming each setting that differs, before deciding anything. Settings changed
between two runs of the worker show as the newest run's. They also warn when the live burst
detector's newest snapshot holds a warm-up's history (`qris-guard warmup`) and the replay's
detector starts cold, or from a snapshot (`--detector-snapshot`) of other history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from hashlib import blake2b
from typing import TYPE_CHECKING

from ..core import burstsnapshot, codec
from ..core.burst import BurstParams
from ..core.eventtime import format_ms, parse_ms
from ..settings import DOCS, Settings, own_account_ids

if TYPE_CHECKING:  # (the worker stamps its settings with this module: no replay driver loaded for it)
    from .replay import WarmStart

SETTINGS_HEADER = "qris.settings"

# The settings a decision depends on (the rest say where records go, how to connect, and how
# fast: not what is decided).
DECISION_SETTINGS = (
    "timeout_s",
    "lateness_s",
    "retention_s",
    "clock_skew_s",
    "probe_age_s",
    "hold_grace_s",
    "max_hold_s",
    "burst_threshold",
    "burst_learn_min_payments",
    "burst_learn_min_minutes",
    "max_scopes",
    "max_merchants_tracked",
    "ledger_own_accounts",
)


def decision_settings(s: Settings) -> dict[str, str]:
    """`QRIS_*` name to value of the settings decisions depend on (numbers as `%.15g`: exact for
    every integer setting, 600.0 and 600 alike; the ledger's own accounts as `accounts_stamp`).

    >>> decision_settings(Settings(timeout_s=600))["QRIS_TIMEOUT_S"]
    '600'
    """
    return {
        DOCS[name][0]: accounts_stamp(own_account_ids(s.ledger_own_accounts))
        if name == "ledger_own_accounts"
        else f"{float(getattr(s, name)):.15g}"
        for name in DECISION_SETTINGS
    }


def accounts_stamp(accounts: frozenset[str]) -> str:
    """The ledger's own accounts as the stamp carries them: how many, and a digest of the ids in
    order (one set, however listed, gives one stamp), not the ids themselves: the stamp goes on
    every refund, alert and dead letter, records that show no plain account id, and a hundred
    ids would add kilobytes to each.

    >>> accounts_stamp(frozenset())
    'none'
    >>> accounts_stamp(frozenset({"GL-1", "GL-2"}))
    '2 accounts, digest 3e6ba61b16f3'
    """
    if not accounts:
        return "none"
    # (Ids hold no control character: a newline between them cannot be part of one.)
    digest = blake2b("\n".join(sorted(accounts)).encode(), digest_size=6).hexdigest()
    return f"{len(accounts)} account{'s' if len(accounts) > 1 else ''}, digest {digest}"


SENT_BEHIND_HEADER = "qris.sent_behind_ms"


def sent_behind(alert: bytes, now_s: float) -> tuple[str, bytes]:
    """The header that says how long after its `occurred_at` an alert was sent, in ms: a worker
    catching up on a backlog (down during an incident, started afterwards) sends the incident's
    alerts hours after their time, with the same content a replay makes; the forwarder reads
    this to send them as a catch-up notice, not a page (docs/alert-routing.md). Not counted: 0.

    >>> sent_behind(b'{"occurred_at": "2025-03-29T00:00:00Z"}', 1743206400.0 + 5400.25)
    ('qris.sent_behind_ms', b'5400250')
    >>> sent_behind(b'{}', 0.0)
    ('qris.sent_behind_ms', b'0')
    """
    try:
        behind = max(0, round(now_s * 1000) - parse_ms(codec.loads(alert)["occurred_at"]))
    except (ValueError, KeyError, TypeError):
        behind = 0
    return SENT_BEHIND_HEADER, str(behind).encode()


def settings_header(s: Settings) -> bytes:
    """The header value the worker sends with every output record."""
    return codec.dumps(decision_settings(s))


def differences(live: Mapping[str, str], here: Mapping[str, str]) -> list[str]:
    """Each setting both know that differs, as `NAME: live X, here Y`.

    >>> differences({"QRIS_TIMEOUT_S": "600", "QRIS_NEW": "1"}, {"QRIS_TIMEOUT_S": "300"})
    ['QRIS_TIMEOUT_S: live 600, here 300']
    """
    return [f"{k}: live {v}, here {here[k]}" for k, v in sorted(live.items()) if k in here and here[k] != v]


def parse_header(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str] | None:
    """The stamped settings of one record's headers (None: none, or not readable)."""
    for name, value in headers or ():
        if name == SETTINGS_HEADER and value is not None:
            try:
                got = codec.loads(value)
            except ValueError:
                return None
            if isinstance(got, dict):
                return {str(k): str(v) for k, v in got.items()}
    return None


def newest_stamps(s: Settings, poll_timeout_ms: int = 2000) -> tuple[list[dict[str, str]], int]:
    """The settings stamped on the newest record of each partition of the output topics (the
    refunds, alerts and dead letters the live worker sent), and how many of those newest records
    carry none (a worker older than the stamp); a topic that does not exist or an empty
    partition gives nothing."""
    from kafka import KafkaConsumer, TopicPartition

    from ..security import kafka_python_config

    consumer = KafkaConsumer(
        **kafka_python_config(s), enable_auto_commit=False, group_id=None, consumer_timeout_ms=poll_timeout_ms
    )
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in (s.refund_topic, s.alert_topic, s.dead_letter_topic)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return [], 0
        consumer.assign(tps)
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        wanted = {tp for tp in tps if end[tp] > begin[tp]}
        for tp in wanted:
            consumer.seek(tp, end[tp] - 1)
        consumer.pause(*(set(tps) - wanted))
        stamps: list[dict[str, str]] = []
        unstamped = 0
        seen: set[TopicPartition] = set()
        while seen != wanted:
            batch = consumer.poll(timeout_ms=poll_timeout_ms)
            if not batch:
                break
            for tp, records in batch.items():
                if tp in seen:
                    continue
                for rec in records:
                    if rec.offset >= end[tp] - 1:
                        seen.add(tp)
                        got = parse_header(rec.headers)
                        if got is not None:
                            stamps.append(got)
                        else:
                            unstamped += 1
                        break
            consumer.pause(*seen)
        return stamps, unstamped
    finally:
        consumer.close()


def other_settings_warning(s: Settings, stamps: Iterable[Mapping[str, str]]) -> str | None:
    """The warning for a replay with `s` when the live worker stamped `stamps`, or None.

    >>> live = decision_settings(Settings(timeout_s=600))
    >>> other_settings_warning(Settings(), [live]).split(";")[0]
    'the live worker decided with other settings than these (QRIS_TIMEOUT_S: live 600, here 300)'
    >>> other_settings_warning(Settings(timeout_s=600), [live]) is None
    True
    """
    here = decision_settings(s)
    found = sorted({d for stamp in stamps for d in differences(stamp, here)})
    if not found:
        return None
    return (
        f"the live worker decided with other settings than these ({'; '.join(found)}); "
        "these decisions can differ from its: set those variables as the live worker had them"
    )


def warmed_detector_warning(snapshot: bytes | None, burst: BurstParams, warm: WarmStart | None = None) -> str | None:
    """The warning for a replay of the input topics when the live burst detector's latest
    snapshot (`snapshot`, the snapshots topic's newest value) holds a warm-up's history and the
    replay's detector does not start from the same (`warm`: the `--detector-snapshot` given;
    None: cold), or None. A detector started cold opens no incident until its baselines are
    learned, so refunds the live worker held are paid and then clawed back, and its incidents
    differ. The warm-ups are compared by the last minute of their history (`warmed_through`).

    >>> from stream.core.burst import BurstDetector
    >>> det = BurstDetector(1)
    >>> warmed_detector_warning(burstsnapshot.encode(det, 0), BurstParams()) is None
    True
    >>> det.warmed_through = 29068560
    >>> live = burstsnapshot.encode(det, 0)
    >>> warmed_detector_warning(live, BurstParams()).split(";")[0][-71:]
    'warm-up (qris-guard warmup) of history through 2025-04-08T12:00:00.000Z'
    >>> from stream.drivers.replay import WarmStart
    >>> warmed_detector_warning(live, BurstParams(), WarmStart(b"", frozenset({0}), 29068560)) is None
    True
    """
    if snapshot is None:
        return None
    try:
        warmed = burstsnapshot.decode(snapshot, burst).detector.warmed_through
    except ValueError:
        return None  # (the live worker rebuilds from the signals then: as a cold replay does)
    given = None if warm is None else warm.warmed_through
    if given == warmed:
        return None
    if warmed is None:
        assert given is not None
        return (
            f"this replay's burst detector starts from --detector-snapshot, a warm-up of history through "
            f"{format_ms(given * 60_000)}, and the live worker's latest snapshot holds no warm-up: its FAILURE_BURST "
            "incidents, and the refunds held during them, can differ from the live worker's"
        )
    how = (
        "to decide as the live worker did, rebuild its warm-up's snapshot with `qris-guard warmup --in HISTORY "
        "--out FILE` from the same history file and settings (the same snapshot, byte for byte) and replay with "
        "`--detector-snapshot FILE`"
    )
    if warm is None:
        return (
            f"the live worker's burst detector started from a warm-up (qris-guard warmup) of history through "
            f"{format_ms(warmed * 60_000)}; this replay starts it cold (no history), so its FAILURE_BURST "
            "incidents, and the refunds held during them, can differ from the live worker's: until its baselines "
            f"are learned it opens none, and refunds the live worker held are paid here; {how}"
        )
    through = "no warm-up's" if given is None else f"history through {format_ms(given * 60_000)}"
    return (
        f"the live worker's burst detector started from a warm-up (qris-guard warmup) of history through "
        f"{format_ms(warmed * 60_000)}; the --detector-snapshot given holds {through}, so this replay's "
        f"FAILURE_BURST incidents, and the refunds held during them, can differ from the live worker's; {how}"
    )
