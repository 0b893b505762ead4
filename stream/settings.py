"""Configuration: one frozen settings object built from `QRIS_*` environment variables by a
pure function (`from_env`). Each variable is documented where it is defined; the README lists
them all (`python -m stream settings` prints the effective values).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from .core.burst import BurstParams
from .core.partition import Params


def _meta(env: str, doc: str) -> dict[str, str]:
    return {"env": env, "doc": doc}


@dataclass(frozen=True)
class Settings:
    bootstrap: str = "127.0.0.1:9092"
    payment_topic: str = "qris.payment-requests"
    ledger_topic: str = "qris.ledger-debits"
    refund_topic: str = "qris.refunds"
    alert_topic: str = "qris.alerts"
    dead_letter_topic: str = "qris.dead-letter"
    signals_topic: str = "qris.burst-signals"
    partitions: int = 4
    timeout_s: float = 300.0
    lateness_s: float = 30.0
    retention_s: float = 48 * 3600.0
    clock_skew_s: float = 60.0
    idle_timeout_s: float = 60.0
    probe_age_s: float = 30.0
    burst_threshold: float = 7.0  # BurstParams.threshold
    app_id: str = "qris-guard"
    store: str = "rocksdb://"
    data_dir: str = "var/worker"
    batch_max: int = 2000
    batch_within_s: float = 0.1
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    session_timeout_s: float = 30.0
    log_level: str = "info"
    uvloop: int = 1

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
        )

    @property
    def burst(self) -> BurstParams:
        return BurstParams(threshold=self.burst_threshold)

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
        )

    def output_topic(self, role: str) -> str:
        return {
            "refunds": self.refund_topic,
            "alerts": self.alert_topic,
            "dead_letter": self.dead_letter_topic,
            "signals": self.signals_topic,
        }[role]


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
    "partitions": ("QRIS_PARTITIONS", "partitions when qris-guard creates the topics (inputs co-partitioned)"),
    "timeout_s": ("QRIS_TIMEOUT_S", "T: seconds after a debit before an unsettled amount is refunded"),
    "lateness_s": ("QRIS_LATENESS_S", "A: allowed lateness of a record behind its own stream, seconds"),
    "retention_s": ("QRIS_RETENTION_S", "R: seconds of event time a quiet reference's state is kept"),
    "clock_skew_s": (
        "QRIS_CLOCK_SKEW_S",
        "F: a record dated more than this many seconds ahead of its Kafka timestamp counts at its Kafka timestamp "
        "(clock guard, CLOCK_SKEW alert)",
    ),
    "idle_timeout_s": (
        "QRIS_IDLE_TIMEOUT_S",
        "live only: wall-clock seconds an input stream may be silent before the watermark moves without it",
    ),
    "probe_age_s": (
        "QRIS_PROBE_AGE_S",
        "burst signals: seconds after its request a payment is judged settled, failed or unsettled",
    ),
    "burst_threshold": (
        "QRIS_BURST_THRESHOLD",
        "burst incidents open at this surprise, -log10 of the binomial tail (one value for all scopes)",
    ),
    "app_id": ("QRIS_APP_ID", "Faust application id (consumer group, changelog topic prefix)"),
    "store": ("QRIS_STORE", "Faust table store: rocksdb:// in production, memory:// for quick trials"),
    "data_dir": ("QRIS_DATA_DIR", "worker data directory (RocksDB tables)"),
    "batch_max": ("QRIS_BATCH_MAX", "records per processing batch in the worker"),
    "batch_within_s": ("QRIS_BATCH_WITHIN_S", "seconds the worker waits to fill a batch"),
    "web_port": ("QRIS_WEB_PORT", "port of the worker's web endpoints (status, stats); 0 disables them"),
    "web_host": ("QRIS_WEB_HOST", "address the web endpoints bind to (0.0.0.0 in a container)"),
    "session_timeout_s": (
        "QRIS_SESSION_TIMEOUT_S",
        "consumer group session timeout: how long a crashed worker's partitions wait before reassignment",
    ),
    "log_level": ("QRIS_LOG_LEVEL", "log level: debug, info, warning, error"),
    "uvloop": ("QRIS_UVLOOP", "1: run the worker on uvloop (faster); 0: the standard asyncio loop"),
}


def from_env(env: Mapping[str, str]) -> Settings:
    """Build settings from an environment mapping; unknown `QRIS_*` names are an error, so a
    typo does not silently fall back to a default."""
    known = {name for name, _ in DOCS.values()}
    typos = sorted(k for k in env if k.startswith("QRIS_") and k not in known and not k.startswith(_OTHER_PREFIXES))
    if typos:
        raise ValueError(f"unknown setting(s) {', '.join(typos)}; known: {', '.join(sorted(known))}")
    values: dict[str, object] = {}
    for f in fields(Settings):
        var = DOCS[f.name][0]
        if var in env:
            raw = env[var]
            try:
                values[f.name] = {int: int, float: float}.get(type(f.default), str)(raw)  # type: ignore[operator]
            except ValueError:
                raise ValueError(f"{var}={raw!r}: expected {type(f.default).__name__}") from None
    return Settings(**values)  # type: ignore[arg-type]


# Variables read by tools other than the settings object: kafka/broker.sh, tests, benchmarks.
_OTHER_PREFIXES = ("QRIS_KAFKA_", "QRIS_TEST_", "QRIS_BENCH_", "QRIS_SIM_", "QRIS_WEB_HOST_PORT")


def to_env(settings: Settings) -> dict[str, str]:
    """The `QRIS_*` variables that give `settings` back through `from_env` (for child processes)."""
    return {DOCS[f.name][0]: str(getattr(settings, f.name)) for f in fields(Settings)}
