"""The ``simulate`` command: options, then generate a scenario into a replay file or onto
Kafka. ``add_arguments`` and ``run`` are wired into the project's CLI; they read no
environment variables (the CLI passes everything as options, and Kafka security as settings).
"""

import argparse
import sys
import time
import typing
from dataclasses import fields, replace
from typing import Any

import orjson

from stream.core.eventtime import parse_instant
from stream.outsink import WholeWrites
from stream.simulate.degradation import DEGRADE_SCOPES
from stream.simulate.output import TopicUnusable, produce, write_replay
from stream.simulate.scenarios import SCENARIOS, Knobs
from stream.simulate.traffic import LEDGER_TOPIC, PAYMENT_TOPIC, generate
from stream.simulate.truth import GroundTruth

if typing.TYPE_CHECKING:
    from stream.settings import Settings

DEFAULT_START = "2025-03-29T09:00:00+07:00"


def event_time_ms(text: str) -> int:
    """An event time given as RFC 3339 with a zone, or as epoch milliseconds.

    >>> event_time_ms("1743213600000") == event_time_ms("2025-03-29T09:00:00+07:00")
    True
    """
    try:
        return parse_instant(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time or epoch ms: {text!r}") from error


def _knob_value(name: str, text: str) -> Any:
    annotation = {f.name: f.type for f in fields(Knobs)}[name]
    options = typing.get_args(annotation)
    if annotation is float or (float in options and type(None) in options):
        return float(text)
    if name.endswith("_ms"):
        return event_time_ms(text)
    if annotation is int:
        return int(text)
    return text


def parse_knob(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` of ``--set``, typed as the knob is.

    >>> parse_knob("failure_rate=0.05"), parse_knob("outage_start_ms=2025-03-29T10:00:00Z")
    (('failure_rate', 0.05), ('outage_start_ms', 1743242400000))
    """
    name, separator, value = text.partition("=")
    name = name.strip().replace("-", "_")
    known = {f.name for f in fields(Knobs)}
    if not separator or name not in known:
        raise argparse.ArgumentTypeError(
            f"expected KNOB=VALUE with KNOB one of: {', '.join(sorted(known))}; got {text!r}"
        )
    try:
        return name, _knob_value(name, value.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"bad value for {name}: {value!r}") from error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``simulate`` options, added to ``parser``."""
    scenarios = "; ".join(f"{name}: {text}" for name, (text, _) in SCENARIOS.items())
    scenarios = scenarios.replace("%", "%%")  # argparse formats help with %
    parser.add_argument("--scenario", choices=list(SCENARIOS), default="normal", help=f"{scenarios}")
    parser.add_argument("--seed", type=int, default=1, help="same seed, same bytes (default 1)")
    parser.add_argument(
        "--start",
        type=event_time_ms,
        default=event_time_ms(DEFAULT_START),
        help=f"event time of the run's start, RFC 3339 or epoch ms (default {DEFAULT_START})",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        help="event-time minutes of arrivals (default 60, or unbounded with --payments)",
    )
    parser.add_argument(
        "--rate-per-min",
        type=float,
        default=300.0,
        help="mean payments per minute of an ordinary weekday (default 300)",
    )
    parser.add_argument(
        "--payments",
        type=int,
        help="stop after this many payments, about 3 records each (lifecycles still finish)",
    )
    # No defaults here: `qris-guard simulate` fills what is not given from the QRIS_* settings
    # (the topics the worker reads), `run` from the contract's names.
    parser.add_argument("--partitions", type=int, help="input partitions (default $QRIS_PARTITIONS or 4)")
    parser.add_argument(
        "--payment-topic", help=f"payment-requests topic (default $QRIS_PAYMENT_TOPIC or {PAYMENT_TOPIC})"
    )
    parser.add_argument("--ledger-topic", help=f"ledger-debits topic (default $QRIS_LEDGER_TOPIC or {LEDGER_TOPIC})")
    parser.add_argument("--issuer-id", help="our bank's id in the records (default BANKDKI)")
    parser.add_argument("--outage-switch", help="switch that stops settling (default RINTIS)")
    parser.add_argument("--outage-start", type=event_time_ms, help="event time the outage starts (RFC 3339/ms)")
    parser.add_argument("--outage-minutes", type=float, help="outage length (default 20)")
    parser.add_argument(
        "--degrade-scope",
        choices=[scope for scope in DEGRADE_SCOPES if scope],
        help="whose payments fail more for a while (placed by --degrade-start, degrade_at or the scenario)",
    )
    parser.add_argument(
        "--degrade-id",
        help="the degraded switch, acquirer, merchant NMID or issuer (merchant: default the busiest)",
    )
    parser.add_argument("--degrade-start", type=event_time_ms, help="event time the degradation starts (RFC 3339/ms)")
    parser.add_argument("--degrade-minutes", type=float, help="degradation length (default 30)")
    parser.add_argument(
        "--degrade-failure-rate",
        type=float,
        help="share of the scope's payments that fail at full strength (default 0.3)",
    )
    parser.add_argument(
        "--degrade-ramp-minutes", type=float, help="minutes the failure share takes to reach full (default 0: at once)"
    )
    parser.add_argument(
        "--set",
        dest="knobs",
        type=parse_knob,
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="any scenario knob, e.g. --set failure_rate=0.02 (repeatable)",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="write a replay file (JSON Lines); '-' for stdout")
    target.add_argument("--bootstrap", help="produce to Kafka at HOST:PORT[,HOST:PORT]")
    parser.add_argument("--truth", help="also write the run's ground truth (JSON) here")


def fill_from_settings(args: argparse.Namespace, settings: "Settings") -> None:
    """The topics and partition count not given as options, from the settings: the worker's
    own topics, so a simulation goes where the worker reads, not into the contract's default
    topics of a shared cluster."""
    for option in ("partitions", "payment_topic", "ledger_topic"):
        if getattr(args, option) is None:
            setattr(args, option, getattr(settings, option))


def run(args: argparse.Namespace, client: "Settings | None" = None) -> int:
    """Generate the scenario to ``--out`` or ``--bootstrap``; returns the exit status.
    ``client``: how to connect to Kafka (security); its bootstrap gives way to ``--bootstrap``."""
    for option, default in (("partitions", 4), ("payment_topic", PAYMENT_TOPIC), ("ledger_topic", LEDGER_TOPIC)):
        if getattr(args, option) is None:
            setattr(args, option, default)
    knobs: dict[str, Any] = dict(args.knobs)
    for option, knob in (
        ("issuer_id", "issuer_id"),
        ("outage_switch", "outage_switch"),
        ("outage_start", "outage_start_ms"),
        ("outage_minutes", "outage_minutes"),
        ("degrade_scope", "degrade_scope"),
        ("degrade_id", "degrade_id"),
        ("degrade_start", "degrade_start_ms"),
        ("degrade_minutes", "degrade_minutes"),
        ("degrade_failure_rate", "degrade_failure_rate"),
        ("degrade_ramp_minutes", "degrade_ramp_minutes"),
    ):
        value = getattr(args, option)
        if value is not None:
            knobs[knob] = value
    truth = GroundTruth()
    try:
        records = generate(
            args.scenario,
            seed=args.seed,
            start_ms=args.start,
            minutes=args.minutes if args.minutes is not None or args.payments else 60.0,
            rate_per_min=args.rate_per_min,
            partitions=args.partitions,
            payment_topic=args.payment_topic,
            ledger_topic=args.ledger_topic,
            payments=args.payments,
            truth=truth,
            **knobs,
        )
    except (TypeError, ValueError) as error:
        print(f"simulate: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    from stream.drivers.progress import Progress

    records = Progress(f"simulate {args.scenario}").wrap(records)
    if args.out is not None:
        if args.out == "-":
            out = WholeWrites(sys.stdout.buffer)  # (a reader gone mid-write raises, never a cut file)
            count = write_replay(records, out)  # type: ignore[arg-type]  # (write is what it uses)
            out.flush()
        else:
            with open(args.out, "wb") as sink:
                count = write_replay(records, sink)
        target = args.out
    else:
        target_client = replace(client, bootstrap=args.bootstrap) if client else args.bootstrap
        try:
            count = produce(records, target_client, partitions=args.partitions)
        except TopicUnusable as error:  # the CLI's status for topics it cannot work with
            print(f"simulate: {error}", file=sys.stderr)
            return 1
        target = args.bootstrap
    elapsed_s = time.perf_counter() - started
    if args.truth:
        with open(args.truth, "wb") as sink:
            sink.write(orjson.dumps(truth.to_json(), option=orjson.OPT_INDENT_2))
    print(
        f"simulate: {args.scenario}: {truth.payments} payments, {count} records "
        f"({len(truth.owed)} owed a refund) to {target} in {elapsed_s:.2f} s "
        f"({count / max(elapsed_s, 1e-9):,.0f} records/s)",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stream.simulate",
        description="Generate simulated QRIS issuer traffic in event time.",
    )
    add_arguments(parser)
    import os

    from stream.settings import from_env

    args, settings = parser.parse_args(argv), from_env(os.environ)
    fill_from_settings(args, settings)
    return run(args, settings)
