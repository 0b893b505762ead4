"""Configuration: one frozen settings object built from `QRIS_*` environment variables by a
pure function (`from_env`). Each variable is documented where it is defined; the README lists
them all (`python -m stream settings` prints the effective values).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace

from .core.burst import BurstParams
from .core.partition import Params
from .core.validation import identifier_problem


class SettingsError(ValueError):
    """A `QRIS_*` variable that is unknown or has a value that cannot be used (one line)."""


def _meta(env: str, doc: str) -> dict[str, str]:
    return {"env": env, "doc": doc}


# A ledger books its own reversals on a few suspense or general-ledger accounts; a list longer
# than this is most likely customer accounts pasted in, whose misdirected reversals it would
# silence.
MAX_LEDGER_OWN_ACCOUNTS = 100
# What may surround an id in the list (an env file's `a, b`, a YAML block folded over lines).
_LIST_BLANKS = " \t\r\n"


def own_account_ids(text: str) -> frozenset[str]:
    """The account ids of `QRIS_LEDGER_OWN_ACCOUNTS`: comma-separated, blanks around each left
    out, repeats once.

    >>> sorted(own_account_ids(" GL-1, GL-2,GL-1 "))
    ['GL-1', 'GL-2']
    >>> own_account_ids("")
    frozenset()
    """
    if not text.strip(_LIST_BLANKS):
        return frozenset()
    return frozenset(item.strip(_LIST_BLANKS) for item in text.split(","))


@dataclass(frozen=True)
class Settings:
    bootstrap: str = "127.0.0.1:9092"
    payment_topic: str = "qris.payment-requests"
    ledger_topic: str = "qris.ledger-debits"
    refund_topic: str = "qris.refunds"
    alert_topic: str = "qris.alerts"
    dead_letter_topic: str = "qris.dead-letter"
    signals_topic: str = "qris.burst-signals"
    incidents_topic: str = "qris.incidents"
    partitions: int = 4
    timeout_s: float = 300.0
    lateness_s: float = 30.0
    retention_s: float = 48 * 3600.0
    clock_skew_s: float = 60.0
    idle_timeout_s: float = 60.0
    stall_alert_s: float = 600.0  # clockstall.ClockStall
    probe_age_s: float = 30.0
    burst_threshold: float = 7.0  # BurstParams.threshold
    hold_grace_s: float = 900.0
    max_hold_s: float = 7200.0
    max_lead_s: float = 300.0  # refund holds: event time a worker runs ahead of the incidents
    burst_learn_min_payments: int = 2000  # BurstParams.learn_min_payments
    burst_learn_min_minutes: int = 10  # BurstParams.learn_min_minutes
    max_scopes: int = 1000  # BurstParams.max_scopes_per_type
    max_merchants_tracked: int = 10_000  # BurstParams.max_merchants_tracked
    ledger_own_accounts: str = ""  # Params.ledger_own_accounts (`own_account_ids`)
    signals_part_max_bytes: int = 524_288  # Params.signals_part_max_bytes
    snapshots_topic: str = "qris.burst-snapshots"
    snapshot_every: int = 60  # signal reports between two snapshots of the live detector
    snapshot_min_interval_s: float = 10.0  # ... and at least this long between them (backlogs)
    app_id: str = "qris-guard"
    store: str = "rocksdb://"
    data_dir: str = "var/worker"
    batch_max: int = 2000
    batch_within_s: float = 0.1
    fetch_max_wait_ms: int = 100
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    session_timeout_s: float = 30.0
    recovery_stall_s: float = 60.0  # recovery.RECOVERY_STALL_S
    state_flush_s: float = 600.0  # statestore.RocksPartition
    state_write_buffer_mb: int = 64  # statestore.rocks_options
    feed_stall_s: float = 120.0  # recovery.FEED_STALL_S
    stop_timeout_s: float = 90.0  # stopdeadline.StopDeadline
    log_level: str = "info"
    uvloop: int = 1
    # Kafka client security (stream/security.py turns these into each client library's options)
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    sasl_password_file: str = ""
    sasl_oauth_token_file: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_key_password: str = field(default="", repr=False)
    ssl_key_password_file: str = ""
    ssl_check_hostname: int = 1
    replication_factor: int = 1
    min_insync_replicas: int = 0

    api_token: str = field(default="", repr=False)
    api_token_file: str = ""
    log_format: str = "text"

    def __post_init__(self) -> None:
        for problem in _problems(self):
            raise SettingsError(problem)

    @property
    def params(self) -> Params:
        return Params(
            timeout_ms=round(self.timeout_s * 1000),
            lateness_ms=round(self.lateness_s * 1000),
            retention_ms=round(self.retention_s * 1000),
            clock_skew_ms=round(self.clock_skew_s * 1000),
            payment_topic=self.payment_topic,
            ledger_topic=self.ledger_topic,
            probe_age_ms=round(self.probe_age_s * 1000),
            hold_grace_ms=round(self.hold_grace_s * 1000),
            max_hold_ms=round(self.max_hold_s * 1000),
            signals_part_max_bytes=self.signals_part_max_bytes,
            ledger_own_accounts=own_account_ids(self.ledger_own_accounts),
        )

    @property
    def burst(self) -> BurstParams:
        return BurstParams(
            threshold=self.burst_threshold,
            learn_min_payments=self.burst_learn_min_payments,
            learn_min_minutes=self.burst_learn_min_minutes,
            max_scopes_per_type=self.max_scopes,
            max_merchants_tracked=self.max_merchants_tracked,
        )

    @property
    def max_lead_in_effect_s(self) -> float:
        """`max_lead_s` as the worker applies it (0: no limit): never less than the idle timeout
        plus 2 minutes (the idle rule's timeout, its check and the detector's minute to close,
        with room to spare: a quiet feed holds the incidents back that long, and live traffic
        must not wait for it)."""
        return 0.0 if self.max_lead_s <= 0 else max(self.max_lead_s, self.idle_timeout_s + 120.0)

    @property
    def stall_alert_in_effect_s(self) -> float:
        """`stall_alert_s` as the worker applies it (0: never): never less than the idle timeout."""
        return max(self.stall_alert_s, self.idle_timeout_s) if self.stall_alert_s > 0 else 0.0

    def with_topic_prefix(self, prefix: str) -> Settings:
        """These settings with every topic named `{prefix}.<role>`: a fresh set of its own, as
        the demo, benchmarks and tests use, sharing nothing (the signals topic included).

        >>> Settings().with_topic_prefix("run1").signals_topic
        'run1.burst-signals'
        """
        return replace(
            self,
            payment_topic=f"{prefix}.payment-requests",
            ledger_topic=f"{prefix}.ledger-debits",
            refund_topic=f"{prefix}.refunds",
            alert_topic=f"{prefix}.alerts",
            dead_letter_topic=f"{prefix}.dead-letter",
            signals_topic=f"{prefix}.burst-signals",
            incidents_topic=f"{prefix}.incidents",
            snapshots_topic=f"{prefix}.burst-snapshots",
        )

    def output_topic(self, role: str) -> str:
        """The topic of a decision's role (KeyError for none). Asked for every record sent:
        compared, not looked up in a dict made each time."""
        if role == "refunds":
            return self.refund_topic
        if role == "alerts":
            return self.alert_topic
        if role == "dead_letter":
            return self.dead_letter_topic
        if role == "signals":
            return self.signals_topic
        if role == "incidents":
            return self.incidents_topic
        raise KeyError(role)


# env variable name and meaning of every setting
DOCS: dict[str, tuple[str, str]] = {
    "bootstrap": ("QRIS_BOOTSTRAP", "Kafka bootstrap servers, host:port[,host:port]"),
    "payment_topic": ("QRIS_PAYMENT_TOPIC", "input topic of payment lifecycle events"),
    "ledger_topic": ("QRIS_LEDGER_TOPIC", "input topic of core-banking ledger events"),
    "refund_topic": ("QRIS_REFUND_TOPIC", "output topic of refund instructions"),
    "alert_topic": ("QRIS_ALERT_TOPIC", "output topic of alerts for payment operations"),
    "dead_letter_topic": ("QRIS_DEAD_LETTER_TOPIC", "output topic of rejected input records"),
    "signals_topic": (
        "QRIS_SIGNALS_TOPIC",
        "internal topic (1 partition) of the partitions' closed minutes for the burst detector",
    ),
    "incidents_topic": (
        "QRIS_INCIDENTS_TOPIC",
        "internal topic (1 partition) of the detector's incident decisions and progress, read whole by every worker",
    ),
    "partitions": (
        "QRIS_PARTITIONS",
        "partitions when qris-guard creates the topics (inputs co-partitioned), and simulate's default",
    ),
    "timeout_s": ("QRIS_TIMEOUT_S", "T: seconds after a debit before an unsettled amount is refunded"),
    "lateness_s": (
        "QRIS_LATENESS_S",
        "A: allowed lateness of a record behind its own stream, seconds (at most 1 hour, below T)",
    ),
    "retention_s": (
        "QRIS_RETENTION_S",
        "R: seconds of event time a quiet reference's state is kept (at most 400 days)",
    ),
    "clock_skew_s": (
        "QRIS_CLOCK_SKEW_S",
        "F: a record dated more than this many seconds ahead of its Kafka timestamp counts at its Kafka timestamp "
        "(clock guard, CLOCK_SKEW alert; at most 1 hour, and below T - A unless at most A)",
    ),
    "idle_timeout_s": (
        "QRIS_IDLE_TIMEOUT_S",
        "live only: wall-clock seconds an input stream may be silent, with none of its records left on the broker "
        "(asked at the check; no answer: not silent), before the watermark moves without it",
    ),
    "stall_alert_s": (
        "QRIS_STALL_ALERT_S",
        "live only: wall-clock seconds a partition's watermark may stand still while it takes valid records before "
        "EVENT_TIME_STALLED is raised (0: never; never less than QRIS_IDLE_TIMEOUT_S)",
    ),
    "probe_age_s": (
        "QRIS_PROBE_AGE_S",
        "burst signals: seconds after its request a payment is judged settled, failed or unsettled",
    ),
    "burst_threshold": (
        "QRIS_BURST_THRESHOLD",
        "burst incidents open at this surprise, -log10 of the binomial tail (one value for all scopes)",
    ),
    "hold_grace_s": (
        "QRIS_HOLD_GRACE_S",
        "G: seconds a refund stays held after the last incident covering its payment resolved (at most 1 day)",
    ),
    "max_hold_s": (
        "QRIS_MAX_HOLD_S",
        "H: longest hold of a refund during an incident, seconds after its deadline; 0 turns holds off",
    ),
    "burst_learn_min_payments": (
        "QRIS_BURST_LEARN_MIN_PAYMENTS",
        "cold start: a scope opens no incident before its baseline (or its parent's) has this many payments",
    ),
    "burst_learn_min_minutes": (
        "QRIS_BURST_LEARN_MIN_MINUTES",
        "cold start: ... and this many active minutes of history",
    ),
    "max_scopes": (
        "QRIS_MAX_SCOPES",
        "burst scopes tracked per type (issuer, switch, acquirer, merchant); beyond it a SCOPE_LIMIT alert",
    ),
    "max_merchants_tracked": (
        "QRIS_MAX_MERCHANTS_TRACKED",
        "merchants whose volume the burst detector follows; the others stay in their MCC pool",
    ),
    "ledger_own_accounts": (
        "QRIS_LEDGER_OWN_ACCOUNTS",
        f"account ids, comma-separated (at most {MAX_LEDGER_OWN_ACCOUNTS}), the ledger books reversals on for its own"
        " purposes (a suspense or general-ledger account): a reversal booked on one raises no"
        " DEBIT_ACCOUNT_MISMATCH, a debit from one still does; empty: every reversal to an account"
        " the payment was never debited from alerts",
    ),
    "signals_part_max_bytes": (
        "QRIS_SIGNALS_PART_MAX_BYTES",
        "a partition's burst report larger than this many bytes of JSON goes to the signals topic in parts "
        "(at most half the signals topic's max.message.bytes and the producer's 1,000,000-byte request limit)",
    ),
    "snapshots_topic": (
        "QRIS_SNAPSHOTS_TOPIC",
        "internal compacted topic (1 partition) of the live burst detector's snapshots",
    ),
    "snapshot_every": (
        "QRIS_SNAPSHOT_EVERY",
        "signal reports between two snapshots of the live burst detector (0: never)",
    ),
    "max_lead_s": (
        "QRIS_MAX_LEAD_S",
        "refund holds: seconds of event time a worker's slowest partition may run ahead of the"
        " incidents known before it waits for them (at most 5 s a batch, then 60 s without if they"
        " did not catch up; never less than QRIS_IDLE_TIMEOUT_S + 120; 0: never waits)",
    ),
    "snapshot_min_interval_s": (
        "QRIS_SNAPSHOT_MIN_INTERVAL_S",
        "seconds at least between two snapshots of the live burst detector (a backlog's reports"
        " come many a second; 0: no floor)",
    ),
    "app_id": ("QRIS_APP_ID", "Faust application id (consumer group; state changelog <id>-state-changelog)"),
    "store": ("QRIS_STORE", "local state store: rocksdb:// in production, memory:// for quick trials"),
    "data_dir": ("QRIS_DATA_DIR", "worker data directory (RocksDB per input partition under <id>/state/)"),
    "batch_max": ("QRIS_BATCH_MAX", "records per processing batch in the worker"),
    "batch_within_s": ("QRIS_BATCH_WITHIN_S", "seconds the worker waits to fill a batch"),
    "fetch_max_wait_ms": (
        "QRIS_FETCH_MAX_WAIT_MS",
        "longest wait of the worker's input fetch for new records (Faust fixes 1500; a deadline's refund waits for it)",
    ),
    "web_port": ("QRIS_WEB_PORT", "port of the worker's web endpoints (status, stats); 0 disables them"),
    "web_host": ("QRIS_WEB_HOST", "address the web endpoints bind to (0.0.0.0 in a container)"),
    "session_timeout_s": (
        "QRIS_SESSION_TIMEOUT_S",
        "consumer group session timeout: how long a crashed worker's partitions wait before reassignment",
    ),
    "recovery_stall_s": (
        "QRIS_RECOVERY_STALL_S",
        "seconds a state restore may go without reading a changelog record before the worker restarts itself",
    ),
    "state_flush_s": (
        "QRIS_STATE_FLUSH_S",
        "seconds between background flushes of a partition's local RocksDB (written without its log): a killed "
        "worker's local state comes back at most about this far behind, and its restore reads the changelog from there",
    ),
    "state_write_buffer_mb": (
        "QRIS_STATE_WRITE_BUFFER_MB",
        "MiB a partition's local RocksDB holds in memory before it flushes (two while one flushes): every "
        "partition's memtable fills to it, so a worker's memory grows by up to twice this per partition it owns; "
        "smaller costs CPU (1 to 1024)",
    ),
    "feed_stall_s": (
        "QRIS_FEED_STALL_S",
        "seconds an input or signals partition may have records on the broker (its end offset, asked then) "
        "and none taken before the worker restarts itself",
    ),
    "stop_timeout_s": (
        "QRIS_STOP_TIMEOUT_S",
        "seconds a stopping worker may take (its last batch, commits, closing) before it exits on its own with "
        "code 70; the next start goes on from the last commit",
    ),
    "log_level": ("QRIS_LOG_LEVEL", "log level: debug, info, warning, error, critical"),
    "uvloop": ("QRIS_UVLOOP", "1: run the worker on uvloop (faster); 0: the standard asyncio loop"),
    "security_protocol": (
        "QRIS_SECURITY_PROTOCOL",
        "Kafka security.protocol of every client: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    ),
    "sasl_mechanism": (
        "QRIS_SASL_MECHANISM",
        "SASL mechanism (required with SASL_*): PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER",
    ),
    "sasl_username": ("QRIS_SASL_USERNAME", "SASL user name (PLAIN, SCRAM-*)"),
    "sasl_password": ("QRIS_SASL_PASSWORD", "SASL password (PLAIN, SCRAM-*); secret, never printed"),
    "sasl_password_file": (
        "QRIS_SASL_PASSWORD_FILE",
        "file holding the SASL password (instead of QRIS_SASL_PASSWORD; read when a client is built)",
    ),
    "sasl_oauth_token_file": (
        "QRIS_SASL_OAUTH_TOKEN_FILE",
        "OAUTHBEARER: file holding the access token, re-read at every (re)authentication",
    ),
    "ssl_cafile": (
        "QRIS_SSL_CAFILE",
        "PEM file of the CA(s) that signed the brokers' certificates (default: system CAs)",
    ),
    "ssl_certfile": ("QRIS_SSL_CERTFILE", "PEM client certificate (mutual TLS)"),
    "ssl_keyfile": ("QRIS_SSL_KEYFILE", "PEM private key of the client certificate"),
    "ssl_key_password": ("QRIS_SSL_KEY_PASSWORD", "password of QRIS_SSL_KEYFILE; secret, never printed"),
    "ssl_key_password_file": ("QRIS_SSL_KEY_PASSWORD_FILE", "file holding the password of QRIS_SSL_KEYFILE"),
    "ssl_check_hostname": (
        "QRIS_SSL_CHECK_HOSTNAME",
        "1: the broker certificate must name the host connected to; 0: only its CA is checked",
    ),
    "replication_factor": (
        "QRIS_REPLICATION_FACTOR",
        "replicas of every topic qris-guard creates (its topics, Faust's changelog and internal topics)",
    ),
    "min_insync_replicas": (
        "QRIS_MIN_INSYNC_REPLICAS",
        "min.insync.replicas of the topics qris-guard creates; 0: the broker's default",
    ),
    "log_format": ("QRIS_LOG_FORMAT", "worker log lines: text, or json (one JSON object per line)"),
    "api_token": (
        "QRIS_API_TOKEN",
        "bearer token of the customer-service lookup API (/qris/payments, /qris/accounts); empty: the API is off",
    ),
    "api_token_file": (
        "QRIS_API_TOKEN_FILE",
        "file holding the lookup API's bearer token (instead of QRIS_API_TOKEN; read when the worker starts)",
    ),
}

# Settings whose value is a secret: `qris-guard settings` masks them.
SECRETS = frozenset({"sasl_password", "ssl_key_password", "api_token"})
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


# Event times are milliseconds: a T, R or H below one would be 0 ms (a T of 0, holds off).
_BELOW_MS = "expected at least 0.001 seconds (event times are milliseconds)"


def _own_account_problems(text: str) -> list[str]:
    """Ids the contract would refuse as a record's `account_id` (no record can name them, so
    listing them is a mistake), empty items, and a list past its bound. The ids are not quoted:
    the message goes to logs, and the value may be customer accounts pasted in by mistake."""
    if not text.strip(_LIST_BLANKS):
        return []
    var = DOCS["ledger_own_accounts"][0]
    items = [item.strip(_LIST_BLANKS) for item in text.split(",")]
    if len(set(items)) > MAX_LEDGER_OWN_ACCOUNTS:
        return [
            f"{var} lists {len(set(items))} accounts: expected at most {MAX_LEDGER_OWN_ACCOUNTS}, the ledger's own"
            " suspense or general-ledger accounts (a customer's account listed there is never alerted for)"
        ]
    out = []
    for i, item in enumerate(items, 1):
        problem = identifier_problem(item)
        if problem is not None:
            out.append(f"{var}: account {i} of {len(items)} {problem}; expected account ids separated by commas")
    return out


def _problems(s: Settings) -> list[str]:
    """What is wrong with the settings' values, without reading any file (one line each)."""
    out: list[str] = []
    if s.security_protocol not in SECURITY_PROTOCOLS:
        out.append(f"QRIS_SECURITY_PROTOCOL={s.security_protocol!r}: expected one of {', '.join(SECURITY_PROTOCOLS)}")
        return out
    sasl = s.security_protocol.startswith("SASL_")
    tls = s.security_protocol in ("SSL", "SASL_SSL")
    if sasl and s.sasl_mechanism not in SASL_MECHANISMS:
        out.append(
            f"QRIS_SASL_MECHANISM={s.sasl_mechanism!r}: {s.security_protocol} needs one of {', '.join(SASL_MECHANISMS)}"
        )
    if not sasl:
        given = [DOCS[n][0] for n in _SASL_FIELDS if getattr(s, n)]
        if given:
            out.append(f"{', '.join(given)} set but QRIS_SECURITY_PROTOCOL={s.security_protocol} uses no SASL")
    if not tls:
        given = [DOCS[n][0] for n in _SSL_FIELDS if getattr(s, n)]
        if given:
            out.append(f"{', '.join(given)} set but QRIS_SECURITY_PROTOCOL={s.security_protocol} uses no TLS")
    if sasl and s.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        if not s.sasl_username:
            out.append(f"QRIS_SASL_USERNAME is required with QRIS_SASL_MECHANISM={s.sasl_mechanism}")
        if bool(s.sasl_password) == bool(s.sasl_password_file):
            out.append(f"set exactly one of QRIS_SASL_PASSWORD, QRIS_SASL_PASSWORD_FILE for {s.sasl_mechanism}")
    if sasl and s.sasl_mechanism == "OAUTHBEARER" and not s.sasl_oauth_token_file:
        out.append("QRIS_SASL_OAUTH_TOKEN_FILE is required with QRIS_SASL_MECHANISM=OAUTHBEARER")
    if s.api_token and s.api_token_file:
        out.append("set at most one of QRIS_API_TOKEN, QRIS_API_TOKEN_FILE")
    if s.ssl_key_password and s.ssl_key_password_file:
        out.append("set at most one of QRIS_SSL_KEY_PASSWORD, QRIS_SSL_KEY_PASSWORD_FILE")
    if s.ssl_keyfile and not s.ssl_certfile:
        out.append("QRIS_SSL_KEYFILE is set without QRIS_SSL_CERTFILE")
    if s.ssl_check_hostname not in (0, 1):
        out.append(f"QRIS_SSL_CHECK_HOSTNAME={s.ssl_check_hostname}: expected 1 or 0")
    if s.replication_factor < 1:
        out.append(f"QRIS_REPLICATION_FACTOR={s.replication_factor}: expected 1 or more")
    if not 0 <= s.min_insync_replicas <= s.replication_factor:
        out.append(
            f"QRIS_MIN_INSYNC_REPLICAS={s.min_insync_replicas}: expected 0 (broker default) "
            f"up to QRIS_REPLICATION_FACTOR={s.replication_factor}"
        )
    if s.log_level.lower() not in LOG_LEVELS:
        out.append(f"QRIS_LOG_LEVEL={s.log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
    # (The worker reads only whether the store starts with "memory": anything else, a typo or
    # a path, which it would ignore, meant RocksDB under QRIS_DATA_DIR.)
    if s.store not in ("rocksdb://", "memory://"):
        out.append(f"QRIS_STORE={s.store!r}: expected rocksdb:// (under QRIS_DATA_DIR) or memory://")
    if s.log_format.lower() not in ("text", "json"):
        out.append(f"QRIS_LOG_FORMAT={s.log_format!r}: expected text or json")
    if s.uvloop not in (0, 1):
        out.append(f"QRIS_UVLOOP={s.uvloop}: expected 1 or 0")
    if s.partitions < 1:
        out.append(f"QRIS_PARTITIONS={s.partitions}: expected 1 or more")
    for name, value in (("QRIS_MAX_SCOPES", s.max_scopes), ("QRIS_MAX_MERCHANTS_TRACKED", s.max_merchants_tracked)):
        if value < 1:
            out.append(f"{name}={value}: expected 1 or more")
    if not 1 <= s.state_write_buffer_mb <= 1024:
        out.append(f"QRIS_STATE_WRITE_BUFFER_MB={s.state_write_buffer_mb}: expected 1 to 1024")
    if not 1024 <= s.signals_part_max_bytes <= 524_288:
        out.append(f"QRIS_SIGNALS_PART_MAX_BYTES={s.signals_part_max_bytes}: expected 1024 to 524288")
    for name, value in (
        ("QRIS_BURST_LEARN_MIN_PAYMENTS", s.burst_learn_min_payments),
        ("QRIS_BURST_LEARN_MIN_MINUTES", s.burst_learn_min_minutes),
        ("QRIS_SNAPSHOT_EVERY", s.snapshot_every),
    ):
        if value < 0:
            out.append(f"{name}={value}: expected 0 or more")
    if not 0 <= s.web_port <= 65535:
        out.append(f"QRIS_WEB_PORT={s.web_port}: expected 0 (off) or a port up to 65535")
    for server in s.bootstrap.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not server.strip() or (sep and not host.count(":") and not port.isdigit()) or (sep and not host):
            out.append(f"QRIS_BOOTSTRAP={s.bootstrap!r}: expected host:port[,host:port]")
            break
    if s.batch_max < 1:
        out.append(f"QRIS_BATCH_MAX={s.batch_max}: expected 1 or more")
    if not 0 <= s.fetch_max_wait_ms <= 30_000:
        out.append(f"QRIS_FETCH_MAX_WAIT_MS={s.fetch_max_wait_ms}: expected 0 to 30000")
    for name in (
        "timeout_s",
        "retention_s",
        "idle_timeout_s",
        "batch_within_s",
        "session_timeout_s",
        "recovery_stall_s",
        "feed_stall_s",
        "stop_timeout_s",
        "state_flush_s",
    ):
        value = getattr(s, name)
        if not 0 < value < math.inf:
            out.append(f"{DOCS[name][0]}={value}: expected a number of seconds above 0")
        elif name in ("timeout_s", "retention_s") and value < 0.001:
            out.append(f"{DOCS[name][0]}={value}: {_BELOW_MS}")
    for name in ("lateness_s", "probe_age_s", "clock_skew_s", "snapshot_min_interval_s", "max_lead_s", "stall_alert_s"):
        value = getattr(s, name)
        if not 0 <= value < math.inf:
            out.append(f"{DOCS[name][0]}={value}: expected a number of seconds, 0 or more")
    if 0 < s.session_timeout_s < math.inf and not 6 <= s.session_timeout_s <= 90:
        # Below the broker's default group.min.session.timeout.ms (6 s) the group join fails
        # (InvalidSessionTimeoutError) and the worker idles, owning nothing, until stopped; above
        # Faust's request timeout (90 s) Faust refuses to start its consumer.
        out.append(f"QRIS_SESSION_TIMEOUT_S={s.session_timeout_s}: expected 6 to 90 seconds")
    # (inf, or 1e309 read as inf, opens no incident ever: refund holds off while H says on.)
    if not 0 < s.burst_threshold < math.inf:
        out.append(f"QRIS_BURST_THRESHOLD={s.burst_threshold}: expected a finite number above 0")
    if 0 < s.max_hold_s < 0.001:
        out.append(f"QRIS_MAX_HOLD_S={s.max_hold_s}: {_BELOW_MS}, or 0 for no holds")
    if not 0 <= s.hold_grace_s < math.inf:
        out.append(f"QRIS_HOLD_GRACE_S={s.hold_grace_s}: expected a number of seconds, 0 or more")
    # T and the probe age move event times the engine writes as RFC 3339 (deadlines, the detector's
    # minutes): the refused time range (`partition.occurred_max_ms`) leaves room for T, and its
    # hour of margin for the probe age. Past these bounds a setting is a mistake (a unit in ms).
    if 0 < s.timeout_s < math.inf and s.timeout_s > 2_592_000:
        out.append(f"QRIS_TIMEOUT_S={s.timeout_s}: expected at most 2592000 seconds (30 days){_ms_hint(s.timeout_s)}")
    if 0 <= s.probe_age_s < math.inf and s.probe_age_s > 1_800:
        out.append(f"QRIS_PROBE_AGE_S={s.probe_age_s}: expected at most 1800 seconds (30 minutes)")
    if not 0 <= s.max_hold_s <= 604_800:
        # (The engine leaves room for holds this long before year 10000: `partition.HOLD_MAX_MS`.)
        hint = _ms_hint(s.max_hold_s) if s.max_hold_s > 0 else ""
        out.append(f"QRIS_MAX_HOLD_S={s.max_hold_s}: expected 0 (holds off) to 604800 seconds (7 days){hint}")
    for name, (most_s, words) in _AT_MOST.items():
        value = getattr(s, name)
        if most_s < value < math.inf:
            out.append(f"{DOCS[name][0]}={value}: expected at most {most_s} seconds ({words}){_ms_hint(value)}")
    out.extend(_topic_problems(s))
    out.extend(_own_account_problems(s.ledger_own_accounts))
    return out


# Kafka's own rule for a topic name. A name outside it (a trailing space from an env file) is
# accepted by the worker's start and refused by the broker at the first send, which the
# producer then retries for ever: the partition decides nothing more.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


# Upper bounds of the event-time settings without one of their own above: past them a value is
# a mistake an operations team would not make on purpose, most often milliseconds typed for
# seconds (`QRIS_LATENESS_S=30000` would pay refunds 8.3 hours late; `QRIS_RETENTION_S=172800000`
# would keep quiet references 5.5 years; near 9.3e15 s the saved state's metadata overflows 64 bits).
# R leaves room for the longest T + H (37 days); A and F stay far below T's default margin in
# normal use; G is how long holds outlast an incident, a day at most.
_AT_MOST: dict[str, tuple[int, str]] = {
    "lateness_s": (3_600, "1 hour"),
    "clock_skew_s": (3_600, "1 hour"),
    "hold_grace_s": (86_400, "1 day"),
    "retention_s": (34_560_000, "400 days"),
}


def _ms_hint(value: float) -> str:
    """The reading of a value past its bound as milliseconds, the usual mistake.

    >>> _ms_hint(172800000.0)
    '; milliseconds typed for seconds? (172800000 ms is 172800 s)'
    """
    return f"; milliseconds typed for seconds? ({value:.15g} ms is {value / 1000:.15g} s)"


def _topic_problems(s: Settings) -> list[str]:
    """Topic names Kafka refuses, and one topic named for two roles: an output on an input
    topic is read back as input (a dead letter dead-lettered again, without end), and one name
    for both inputs reads one of them only (no debit, no refund)."""
    out: list[str] = []
    by_name: dict[str, list[str]] = {}
    for name in _TOPIC_FIELDS:
        var, topic = DOCS[name][0], getattr(s, name)
        if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
            out.append(f"{var}={topic!r}: not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -)")
        by_name.setdefault(topic, []).append(var)
    for topic, names in by_name.items():
        if len(names) > 1:
            out.append(f"{' and '.join(names)} are both {topic!r}: each topic has one role, expected distinct names")
    return out


def hold_outlasts_retention(s: Settings) -> str | None:
    """The settings' one combination that is valid but pays money it cannot take back: a hold
    can end (at its deadline + H, a deadline up to T after the reference's last record) after
    the reference's retention R has passed, and rule 4 then drops the state at once, so a
    settlement a minute after the refund paid at the hold's end cancels nothing. With holds
    off (H = 0) the same happens to a refund paid at its deadline when T reaches R (a
    retention of 48 meant as hours). The live worker refuses it; replay warns (it answers
    "what would these settings decide")."""
    if s.max_hold_s == 0 and s.timeout_s >= s.retention_s:
        return (
            f"QRIS_TIMEOUT_S={s.timeout_s:g} reaches QRIS_RETENTION_S={s.retention_s:g} (holds off, "
            "QRIS_MAX_HOLD_S=0): a refund paid at its deadline would be forgotten at once, and a late "
            "settlement could not cancel it; expected the timeout below the retention"
        )
    if s.max_hold_s > 0 and s.timeout_s + s.max_hold_s >= s.retention_s:
        return (
            f"QRIS_MAX_HOLD_S={s.max_hold_s:g} with QRIS_TIMEOUT_S={s.timeout_s:g} reaches "
            f"QRIS_RETENTION_S={s.retention_s:g}: a refund paid at a hold's end would be forgotten at "
            "once, and a late settlement could not cancel it; expected timeout + maximum hold below "
            "the retention"
        )
    return None


def clock_guard_passes_deadlines(s: Settings) -> str | None:
    """A clock guard `F` at or above `T - A`, which the contract wants well below it: a stream
    pushed up to `F` ahead by one wrong clock takes its own later records up to `F - A` late,
    past the deadlines of payments whose settlements are among them, so refunds are paid and
    then cancelled (with the default T and A, `F` = 400 s delays them by up to 370 s, past 300 s
    deadlines). An `F` at most
    `A` delays no record (`eff = max(occurred_at, max_S - A)`), so it is not one. The live
    worker refuses it; replay warns, as for `hold_outlasts_retention`."""
    if s.lateness_s >= s.timeout_s:
        return (
            f"QRIS_LATENESS_S={s.lateness_s:g} reaches QRIS_TIMEOUT_S={s.timeout_s:g}: no clock guard "
            "QRIS_CLOCK_SKEW_S can be below QRIS_TIMEOUT_S - QRIS_LATENESS_S; expected the lateness well "
            "below the timeout"
        )
    if s.clock_skew_s > s.lateness_s and s.clock_skew_s >= s.timeout_s - s.lateness_s:
        return (
            f"QRIS_CLOCK_SKEW_S={s.clock_skew_s:g} reaches QRIS_TIMEOUT_S={s.timeout_s:g} - "
            f"QRIS_LATENESS_S={s.lateness_s:g} = {s.timeout_s - s.lateness_s:g}: a record dated up to "
            f"{s.clock_skew_s:g} s ahead of its Kafka timestamp passes the guard and delays its stream's later "
            f"records by up to {s.clock_skew_s - s.lateness_s:g} s, past the deadlines of payments whose "
            "settlements are among them (refunds paid, then cancelled); expected QRIS_CLOCK_SKEW_S well below "
            "QRIS_TIMEOUT_S - QRIS_LATENESS_S"
        )
    return None


def refused_at_start(s: Settings) -> list[str]:
    """What the live worker refuses to start with (exit 2), `settings` reports, and `replay`
    only warns about: valid values whose combination pays money it should not."""
    return [h for h in (hold_outlasts_retention(s), clock_guard_passes_deadlines(s)) if h is not None]


_TOPIC_FIELDS = (
    "payment_topic",
    "ledger_topic",
    "refund_topic",
    "alert_topic",
    "dead_letter_topic",
    "signals_topic",
    "incidents_topic",
    "snapshots_topic",
)
_SASL_FIELDS = ("sasl_mechanism", "sasl_username", "sasl_password", "sasl_password_file", "sasl_oauth_token_file")
_SSL_FIELDS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password", "ssl_key_password_file")


# How a variable's text becomes its field's value, by the type of the field's default (else text).
_PARSE_AS: dict[type, Callable[[str], object]] = {int: int, float: float}


def from_env(env: Mapping[str, str]) -> Settings:
    """Build settings from an environment mapping; unknown `QRIS_*` names are an error, so a
    typo does not silently fall back to a default."""
    known = {name for name, _ in DOCS.values()}
    typos = sorted(k for k in env if k.startswith("QRIS_") and k not in known and not k.startswith(_OTHER_PREFIXES))
    if typos:
        raise SettingsError("; ".join(f"unknown setting {k}{_did_you_mean(k, known)}" for k in typos))
    values: dict[str, object] = {}
    for f in fields(Settings):
        var = DOCS[f.name][0]
        if var in env:
            raw = env[var]
            try:
                values[f.name] = _PARSE_AS.get(type(f.default), str)(raw)
            except ValueError:
                kind = {int: "an integer", float: "a number"}[type(f.default)]
                raise SettingsError(f"{var}={raw!r}: expected {kind}") from None
    # Each value was parsed to its field's type (the type of the field's default) just above.
    return Settings(**values)  # type: ignore[arg-type]


def _did_you_mean(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else " (`qris-guard settings` lists the known ones)"


# Variables read by tools other than the settings object: kafka/broker.sh, tests, benchmarks,
# Compose (QRIS_WEB_HOST_PORT, QRIS_WORKER_PROCESSES: set in the shell for `docker compose`,
# where a qris-guard run on the host meets them too).
# QRIS_WORKER_SELF_RESTARTS: the worker's own restarts, carried across `execv` (recovery.py).
_OTHER_PREFIXES = (
    "QRIS_KAFKA_",
    "QRIS_TEST_",
    "QRIS_BENCH_",
    "QRIS_SIM_",
    "QRIS_WEB_HOST_PORT",
    "QRIS_WORKER_PROCESSES",
    "QRIS_WORKER_SELF_RESTARTS",
)


def to_env(settings: Settings) -> dict[str, str]:
    """The `QRIS_*` variables that give `settings` back through `from_env` (for child processes)."""
    return {DOCS[f.name][0]: str(getattr(settings, f.name)) for f in fields(Settings)}


# Settings naming a file that holds a secret: a value that names no file is not printed (the
# secret itself, pasted into the wrong variable, is the usual case).
# The client key's file (and the certificate file, which may hold the key too) likewise: a PEM
# key pasted into QRIS_SSL_KEYFILE would be printed whole.
SECRET_FILES = frozenset(
    {
        "sasl_password_file",
        "ssl_key_password_file",
        "api_token_file",
        "sasl_oauth_token_file",
        "ssl_keyfile",
        "ssl_certfile",
    }
)


def shown_path(path: str) -> str:
    """A secret file's path as messages show it: as given when a file is there, else not shown.

    >>> shown_path("/etc/hostname"), shown_path("hunter2-not-a-file")
    ('/etc/hostname', '(no file there; the value, 18 characters, is not shown: is it the secret itself?)')
    """
    if not path or os.path.exists(path):
        return path
    return f"(no file there; the value, {len(path)} characters, is not shown: is it the secret itself?)"


def display(settings: Settings) -> dict[str, str]:
    """Every variable's effective value as `qris-guard settings` prints it: secrets masked, and
    a secret file's path only if a file is there."""
    out = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if f.name in SECRETS and value:
            out[DOCS[f.name][0]] = "********"
        elif f.name in SECRET_FILES:
            out[DOCS[f.name][0]] = shown_path(value)
        else:
            out[DOCS[f.name][0]] = str(value)
    for name, applied in (
        ("max_lead_s", settings.max_lead_in_effect_s),
        ("stall_alert_s", settings.stall_alert_in_effect_s),
    ):
        if applied != getattr(settings, name):
            out[DOCS[name][0]] += f" (in effect: {applied:g}, the floor given by QRIS_IDLE_TIMEOUT_S)"
    return out
