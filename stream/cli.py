"""`qris-guard` (also `python -m stream`): the worker, topic set-up, dump, copy-inputs, replay,
simulate, report. Settings come from `QRIS_*` variables; flags override the ones they name.

A user's mistake (an argument, a setting, a file, a replay line, an unreachable or refusing
broker) ends with one line on stderr and a non-zero exit status, never a traceback:
2 for a mistake in what was given, 1 for topics the command cannot work with (missing, not
co-partitioned), 69 when Kafka cannot be reached or refuses the credentials, 70 for a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from . import BUILD
from .core import codec
from .core.eventtime import BadTimestamp, parse_instant
from .drivers.progress import Progress
from .outsink import WholeWrites, stdout_reader_gone
from .settings import DOCS, Settings, SettingsError, display, from_env, refused_at_start

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .drivers.replay import WarmStart

EXIT_MISTAKE = 2  # an argument, setting, file or replay line is wrong
EXIT_UNAVAILABLE = 69  # Kafka cannot be reached or refuses the credentials (sysexits EX_UNAVAILABLE)
EXIT_INTERNAL = 70  # a bug (sysexits EX_SOFTWARE)
EXIT_BROKEN_PIPE = 141  # the output's reader closed it (128 + SIGPIPE, as a shell reports `yes | head`)


class Mistake(Exception):
    """A user's mistake, said in one line."""


def _time_arg(text: str) -> int:
    """RFC 3339 text or epoch milliseconds."""
    try:
        return parse_instant(text)
    except BadTimestamp as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _open_out(path: str) -> IO[bytes]:
    if path == "-":
        return WholeWrites(sys.stdout.buffer)  # type: ignore[return-value]  # (the methods used)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # A dump, a replay's decisions and a trace hold account ids and payments: readable by their
    # writer only when created (an existing file keeps its mode).
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")  # noqa: SIM115


def _settings(args: argparse.Namespace) -> Settings:
    s = from_env(os.environ)
    overrides = {
        k: getattr(args, k)
        for k in (
            "bootstrap",
            "timeout_s",
            "lateness_s",
            "retention_s",
            "clock_skew_s",
            "partitions",
            "hold_grace_s",
            "max_hold_s",
        )
        if getattr(args, k, None) is not None
    }
    return replace(s, **overrides)


def _connect(s: Settings) -> Settings:
    """`s` after checking that the broker answers and accepts its credentials: a clear
    one-line error now instead of a client retrying quietly until its timeout."""
    from .security import check_broker

    check_broker(s)
    return s


# -- commands ----------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from .topics import PartitionsRefused, check_copartitioned, check_outputs, create_topics, send_refusal_alert
    from .worker.app import run_worker

    s = _settings(args)
    if hazards := refused_at_start(s):
        raise Mistake("; ".join(hazards))
    if args.processes < 1:
        raise Mistake(f"--processes {args.processes}: expected 1 or more")
    s = _connect(s)
    if args.create_topics:
        create_topics(s)
    try:
        n = check_copartitioned(s)
    except PartitionsRefused as refused:
        send_refusal_alert(s, refused)
        raise
    check_outputs(s)
    if n != s.partitions:
        s = replace(s, partitions=n)
    if args.processes > 1:
        from .worker.processes import run_processes

        try:
            return run_processes(s, args.processes)
        except ValueError as exc:
            raise Mistake(str(exc)) from None
    return run_worker(s)


def cmd_topics(args: argparse.Namespace) -> int:
    from .topics import create_topics

    s = _connect(_settings(args))
    for topic, n in create_topics(s).items():
        print(f"{topic}\t{n} partitions")
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    from .drivers.kafkaread import read_topics
    from .drivers.replayfile import write_records

    s = _connect(_settings(args))
    if not args.topics:
        from .topics import check_copartitioned

        check_copartitioned(s)  # a replay of inputs that are not co-partitioned joins the wrong records
    topics = args.topics or [s.payment_topic, s.ledger_topic]
    # Written under a temporary name and renamed at the end: a dump that is interrupted (Ctrl-C,
    # a lost broker) leaves no file that looks whole to `replay` and `trace`.
    # Only for a regular file (or none yet), through its symlinks: a FIFO, /dev/stdout or a
    # process substitution's /dev/fd/N is written as it is, and a symlink stays one.
    final = args.out if args.out == "-" else os.path.realpath(args.out)
    regular = final != "-" and (not os.path.exists(final) or stat.S_ISREG(os.stat(final).st_mode))
    out = f"{final}.partial" if regular else args.out
    try:
        with _open_out(out) as fh:
            records = read_topics(s, topics, from_ms=args.from_time, to_ms=args.to_time)
            n = write_records(fh, Progress("dump").wrap(records))
    except BaseException:
        if regular:
            with contextlib.suppress(OSError):
                os.unlink(out)  # (customer data: no half file left behind)
        raise
    if regular:
        os.replace(out, final)
    print(f"dumped {n} records from {', '.join(topics)} to {args.out}", file=sys.stderr)
    return 0


def cmd_copy_inputs(args: argparse.Namespace) -> int:
    from .drivers.copyinputs import copy_inputs, summary

    if args.to_partitions < 1:
        raise Mistake(f"--to-partitions {args.to_partitions}: expected 1 or more")
    s = _connect(_settings(args))
    started = time.perf_counter()
    progress = Progress("copy-inputs")
    tallies = copy_inputs(s, (args.to_payment_topic, args.to_ledger_topic), args.to_partitions, tick=progress.tick)
    progress.done()
    print(summary(tallies, time.perf_counter() - started))
    return 0


def _kafka_records(args: argparse.Namespace, s: Settings) -> Iterator[Any]:
    """The replay input from the input topics."""
    from .drivers.kafkaread import read_topics

    yield from Progress("replay").wrap(
        read_topics(s, [s.payment_topic, s.ledger_topic], from_ms=args.from_time, to_ms=args.to_time)
    )


def _file_records(args: argparse.Namespace, progress: Progress) -> Any:
    """The replay input from a file: read again for each pass, with its progress on a terminal."""
    from .drivers.replayfile import ReplayFile

    if not progress.enabled:
        return ReplayFile(args.input, args.from_time, args.to_time)
    records = ReplayFile(args.input, args.from_time, args.to_time, tick=progress.tick)
    progress.fraction = records.share
    return records


def _warn_other_live_settings(s: Settings, command: str) -> None:
    from .drivers.livesettings import newest_stamps, other_settings_warning

    try:
        stamps, unstamped = newest_stamps(s)
    except Exception as exc:  # noqa: BLE001 - a check only: no read access to the output topics stops no replay
        print(
            f"{command}: note: the live worker's settings not read from its output topics ({type(exc).__name__}: "
            f"{exc}); not checked against these",
            file=sys.stderr,
        )
        return
    warning = other_settings_warning(s, stamps)
    if warning is not None:
        print(f"{command}: warning: {warning}", file=sys.stderr)
    elif unstamped and not stamps:
        print(
            f"{command}: note: the output topics' newest records carry no settings of the live worker (written by a "
            "worker older than that stamp); not checked against these",
            file=sys.stderr,
        )


def _warm_start(
    args: argparse.Namespace, s: Settings, input_partitions: Callable[[], Iterable[int]]
) -> WarmStart | None:
    """The snapshot `--detector-snapshot` names, for the replay's burst detector to start from
    (None without the option), after checking it against the input's partitions."""
    from .drivers.replay import WarmStart, partitions_mistake

    path = getattr(args, "detector_snapshot", None)
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise Mistake(f"--detector-snapshot {path}: {exc.strerror or exc}") from None
    try:
        warm = WarmStart.of(raw, s.burst)
    except ValueError as exc:
        raise Mistake(f"--detector-snapshot {path}: {exc}") from None
    problem = partitions_mistake(warm, input_partitions())
    if problem is not None:
        raise Mistake(
            f"--detector-snapshot {path}: {problem}: the detector would wait for partitions that report nothing "
            "or leave reports out (`qris-guard warmup --partitions N` writes one of partitions 0..N-1)"
        )
    return warm


def _warn_warmed_live_detector(s: Settings, command: str, warm: WarmStart | None = None) -> None:
    import asyncio

    from .drivers.livesettings import warmed_detector_warning
    from .worker.bursts import read_latest_snapshot

    try:
        raw = asyncio.run(read_latest_snapshot(s))
    except Exception as exc:  # noqa: BLE001 - a check only, as the settings' check above
        print(
            f"{command}: note: the live burst detector's snapshot not read ({type(exc).__name__}: {exc}); "
            "not checked for a warm-up",
            file=sys.stderr,
        )
        return
    warning = warmed_detector_warning(raw, s.burst, warm)
    if warning is not None:
        print(f"{command}: warning: {warning}", file=sys.stderr)


def cmd_replay(args: argparse.Namespace) -> int:
    from .drivers.replay import replay, tune_collector
    from .drivers.replayfile import decision_line

    tune_collector()  # (inherited by the jobs of a parallel replay)
    s = _settings(args)
    for hazard in refused_at_start(s):
        print(f"replay: warning: {hazard}", file=sys.stderr)
    if args.from_kafka:
        from .topics import check_copartitioned

        _connect(s)
        n = check_copartitioned(s)
        # The live worker restores a snapshot of its input topics' partitions only.
        warm = _warm_start(args, s, lambda: range(n))
        _warn_other_live_settings(s, "replay")
        _warn_warmed_live_detector(s, "replay", warm)
    elif not os.path.isfile(args.input):
        raise Mistake(f"--in {args.input}: no such file")
    else:
        from .drivers.replayfile import file_partitions

        warm = _warm_start(args, s, lambda: file_partitions(args.input, (s.payment_topic, s.ledger_topic)))
    started = time.perf_counter()
    # The last line says which build ran (`stream.BUILD`: the sources or `make compiled`'s copy);
    # not a line of its own at the start: a mistake found in the input still ends with one line.
    n_out = 0
    seq: dict[tuple[str, int], int] = {}
    jobs = args.jobs if args.jobs is not None else min(os.cpu_count() or 1, 4)
    if args.input and jobs > 1:
        from .drivers.parallel import replay_file_parallel

        topics = {role: s.output_topic(role) for role in ("refunds", "alerts", "dead_letter")}
        used = [jobs]

        def jobs_used(n: int) -> None:
            used[0] = n

        with _open_out(args.out) as fh:
            n_out = replay_file_parallel(
                args.input,
                s.params,
                drain=args.drain,
                jobs=jobs,
                topics=topics,
                out=fh,
                burst=s.burst,
                from_ms=args.from_time,
                to_ms=args.to_time,
                warm=warm,
                jobs_used=jobs_used,
            )
        shown = (
            f"{used[0]} jobs"
            if used[0] == jobs
            else f"{used[0]} of {jobs} jobs: the others had no partition in the file"
        )
        print(
            f"replay: {n_out} decisions in {time.perf_counter() - started:.2f} s ({shown}) -> {args.out} "
            f"({BUILD} build)",
            file=sys.stderr,
        )
        return 0
    with _open_out(args.out) as fh:
        # With holds, one pass if the detector knows the input partitions up front: `replay`
        # finds a file's with a quick scan, and keeps records from Kafka in memory to find theirs
        # (and to read them again if the one pass gives up).
        progress = Progress("replay")
        records = _kafka_records(args, s) if args.from_kafka else _file_records(args, progress)
        source = args.input or "Kafka"
        decided = replay(records, s.params, drain=args.drain, burst=s.burst, source=source, warm=warm)
        for partition, d in decided:
            topic = s.output_topic(d.role)
            k = (topic, partition)
            seq[k] = seq.get(k, -1) + 1
            fh.write(decision_line(topic, partition, seq[k], d))
            n_out += 1
        progress.done()
    elapsed_s = time.perf_counter() - started
    print(f"replay: {n_out} decisions in {elapsed_s:.2f} s -> {args.out} ({BUILD} build)", file=sys.stderr)
    return 0


def _duration_s(text: str) -> float:
    """`7d`, `12h`, `30m`, `90s` or plain seconds."""
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 7d, 12h, 30m)") from None


def cmd_warmup(args: argparse.Namespace) -> int:
    import asyncio

    from .core import burstsnapshot
    from .drivers import warmup
    from .security import kafka_python_config

    s = _settings(args)
    if args.input and (args.since is not None or args.to_time is not None):
        raise Mistake("--since and --to select reports of the signals topic: use them with --from-kafka")
    if args.from_kafka or not args.out:
        s = _connect(s)
    started = time.perf_counter()
    if args.from_kafka:
        from kafka import KafkaConsumer, TopicPartition

        from .drivers.kafkaread import read_topics
        from .topics import check_copartitioned

        partitions = args.partitions or check_copartitioned(s)
        probe = KafkaConsumer(**kafka_python_config(s), group_id=None, enable_auto_commit=False)
        try:
            tp = TopicPartition(s.signals_topic, 0)
            end_offset = probe.end_offsets([tp])[tp]
        finally:
            probe.close()
        from_ms = None if args.since is None else int(time.time() * 1000 - args.since * 1000)
        warmed = warmup.from_signals(
            read_topics(s, [s.signals_topic], from_ms=from_ms, to_ms=args.to_time), partitions, s.burst
        )
        last = warmed.last_signals_offset
        signals_offset: int | None = end_offset if last is None else last + 1
    else:
        from .drivers.replayfile import read_records

        with open(args.input, "rb") as fh:
            try:
                warmed = warmup.from_records(read_records(fh), s.params, s.burst, args.partitions)
            except warmup.PartitionsMistake as exc:
                raise Mistake(str(exc)) from None
        signals_offset = None
    det = warmed.detector
    if args.out:
        raw = burstsnapshot.encode(det, signals_offset)
        with _open_out(args.out) as fh:
            fh.write(raw)
        where = args.out
    else:
        from .worker.bursts import write_snapshot

        if signals_offset is None:
            # State from a file: the live detector goes on from the signals written from now on.
            from kafka import KafkaConsumer, TopicPartition

            probe = KafkaConsumer(**kafka_python_config(s), group_id=None, enable_auto_commit=False)
            try:
                tp = TopicPartition(s.signals_topic, 0)
                signals_offset = probe.end_offsets([tp]).get(tp, 0)
            finally:
                probe.close()
        raw = burstsnapshot.encode(det, signals_offset)
        asyncio.run(write_snapshot(s, raw))
        where = s.snapshots_topic
    learned = sum(1 for st in det.scopes.values() if det.learned(st))
    print(
        f"warmup: {warmed.reports} signal reports, minutes through {det.closed_through}, {len(det.scopes)} scopes "
        f"({learned} learned), {warmed.incidents_seen} incidents in the history (not emitted); snapshot of "
        f"{len(raw)} bytes covering signals before offset {signals_offset} -> {where} "
        f"({time.perf_counter() - started:.1f} s)",
        file=sys.stderr,
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .core.alerts import rupiah
    from .core.text import escape_text
    from .drivers.report import render, scope_words, summarise
    from .drivers.reportselect import Selection, to_csv

    s = _connect(_settings(args)) if args.from_kafka else _settings(args)
    roles = {s.refund_topic: "refunds", s.alert_topic: "alerts", s.dead_letter_topic: "dead_letter"}
    inputs_seen: dict[str, int] = {}
    others_seen: dict[str, int] = {}  # lines of topics that are neither input nor configured output
    counted = [0]  # lines of the configured output topics

    def outputs() -> Iterator[tuple[str, dict[str, Any]]]:
        if args.from_kafka:
            from .drivers.kafkaread import read_topics

            for rec in read_topics(s, list(roles)):
                if rec.value is not None:
                    where = f"{rec.topic}[{rec.partition}]@{rec.offset}"
                    try:
                        value = codec.loads(rec.value)
                    except ValueError:
                        raise Mistake(f"{where}: not JSON") from None
                    yield roles[rec.topic], _output_value(where, roles[rec.topic], value)
        else:
            with open(args.input, "rb") as fh:
                for n, raw in enumerate(fh, 1):
                    if not raw.strip():
                        continue
                    try:
                        line = codec.loads(raw)
                        topic = line["topic"]
                        if topic in (s.payment_topic, s.ledger_topic):  # (its value may be `value_b64`)
                            inputs_seen[topic] = inputs_seen.get(topic, 0) + 1
                            continue
                        value = line["value"]
                    except (ValueError, KeyError, TypeError):
                        raise Mistake(f"{args.input}:{n}: not an output line of replay") from None
                    if not isinstance(topic, str):
                        raise Mistake(f'{args.input}:{n}: not an output line of replay: "topic" must be a string')
                    if topic in roles:
                        counted[0] += 1
                        yield roles[topic], _output_value(f"{args.input}:{n}", roles[topic], value)
                    else:
                        others_seen[topic] = others_seen.get(topic, 0) + 1

    scope = next(
        ((t, getattr(args, t)) for t in ("merchant", "switch", "acquirer", "issuer") if getattr(args, t)), None
    )
    selection = Selection(args.since, args.until, *(scope or (None, None)))
    selected = list(selection.select(outputs()))
    if others_seen:
        # Output topics named otherwise than configured would count as nothing: all-zero money
        # that looks like a quiet day.
        shown = sorted(others_seen.items(), key=lambda x: -x[1])
        found = ", ".join(f"{n} of {escape_text(t, 64)}" for t, n in shown[:5])
        found += f" and {len(shown) - 5} more topics" if len(shown) > 5 else ""
        configured = (
            f"configured: QRIS_REFUND_TOPIC={s.refund_topic}, QRIS_ALERT_TOPIC={s.alert_topic}, "
            f"QRIS_DEAD_LETTER_TOPIC={s.dead_letter_topic}"
        )
        if not counted[0]:
            raise Mistake(
                f"{args.input}: no line is of the configured output topics ({configured}); its lines are {found}: "
                "set those QRIS_* variables to the output topics the file was written with"
            )
        print(
            f"warning: {args.input}: {sum(others_seen.values())} lines not counted, of topics that are not the "
            f"configured output topics ({found}; {configured})",
            file=sys.stderr,
        )
    if inputs_seen:
        held = f"{args.input} holds input records ({', '.join(f'{n} of {t}' for t, n in inputs_seen.items())})"
        advice = "report summarises decisions: run `qris-guard replay --in FILE --out decisions.jsonl` first"
        if not counted[0]:  # (all-zero money that looks like a quiet day)
            raise Mistake(f"{held} and no decision; {advice}")
        print(f"warning: {held}; {advice}", file=sys.stderr)
    summary = summarise(selected, scope)
    money = summary["refund_totals"]  # (every net figure below is this one's)
    if args.json:
        sys.stdout.buffer.write(codec.dumps(summary) + b"\n")
    elif args.csv:
        sys.stdout.write(to_csv(summary, money))
    else:
        from .core.eventtime import wib_and_utc

        if selection != Selection():
            what = [scope_words(scope)] if scope else []
            if args.since is not None:
                what.append(f"decided from {wib_and_utc(args.since)}")
            if args.until is not None:
                what.append(f"until {wib_and_utc(args.until)}")
            print(f"Selection: {'; '.join(what)}")
        earlier = money["cancelled_earlier"]  # (cancellations of refunds not requested in the selection)
        before = (
            f"; {earlier['count']} of them ({rupiah(earlier['idr'])}) of refunds requested before the selection"
            if earlier["count"]
            else ""
        )
        print(
            f"Refunds: requested {money['requested']['count']} ({rupiah(money['requested']['idr'])}), "
            f"held {money['held']['count']} ({rupiah(money['held']['idr'])}), "
            f"cancelled {money['cancelled']['count']} ({rupiah(money['cancelled']['idr'])}{before}); "
            f"net outstanding {money['net_outstanding']['count']} ({rupiah(money['net_outstanding']['idr'])}); "
            f"held now {money['held_now']['count']} ({rupiah(money['held_now']['idr'])})"
        )
        print("Times: WIB (UTC+7), UTC in brackets.")
        print(render(summary))
    return 0


def _output_value(where: str, role: str, value: object) -> dict[str, Any]:
    """`value` if `report` can read it, else the line's mistake in one line."""
    from .drivers.reportselect import output_problem

    if isinstance(value, str):
        # A `dump` of the output topics: the value as the text that was on the topic.
        try:
            value = codec.loads(value)
        except ValueError:
            raise Mistake(f'{where}: not an output line of replay: "value" is text that is not JSON') from None
    if not isinstance(value, dict):
        raise Mistake(f'{where}: not an output line of replay: "value" must be a JSON object')
    problem = output_problem(role, value)
    if problem:
        raise Mistake(f"{where}: not an output line of replay: {problem}")
    return value


def cmd_trace(args: argparse.Namespace) -> int:
    from .core.text import escape_ascii, escape_text, unescape_ascii
    from .drivers.replayfile import read_records
    from .drivers.trace import partitions_of, render, trace

    s = _connect(_settings(args)) if args.from_kafka else _settings(args)
    topics = (s.payment_topic, s.ledger_topic)
    ref = args.reference
    if args.escaped:
        # (Opt-in: a reference may hold a backslash, so a plain argument is always taken as it is.)
        try:
            ref = unescape_ascii(ref)
        except ValueError as exc:
            # (Quoted as the hints write it: `repr` would show right-to-left letters raw.)
            raise Mistake(f"--escaped '{escape_ascii(ref)}': {exc}") from None
    if args.from_kafka:
        from .drivers.kafkaread import merged_by_time, read_topics
        from .topics import check_copartitioned

        n = check_copartitioned(s)
        warm = _warm_start(args, s, lambda: range(n))
        _warn_other_live_settings(s, "trace")
        _warn_warmed_live_detector(s, "trace", warm)

        # Every partition: records sent without a key (the contract allows them) can be in any
        # of them, and with refund holds on the incidents need them all anyway. (Reading only
        # the partition of the reference's key, with holds off, would miss a keyless debit of a
        # keyed request and references whose name is inside another's.)
        records = merged_by_time(read_topics(s, list(topics), partitions=None))
        source = f"topics {', '.join(topics)} on {s.bootstrap}"
    else:
        with open(args.input, "rb") as fh:
            records = list(read_records(fh))
        source = args.input
        warm = _warm_start(args, s, lambda: {r.partition for r in records if r.topic in topics})
    parts_found = partitions_of(records, ref, topics)
    result = None
    if parts_found or args.all_partitions:
        result = trace(
            records,
            ref,
            s.params,
            parts_found,
            drain=args.drain,
            burst=s.burst,
            all_partitions=args.all_partitions,
            warm=warm,
        )
    if result is None:
        inputs = sum(1 for r in records if r.topic in topics)
        print(
            f"unknown reference '{escape_text(ref)}': no input record of it in {source} ({len(records)} records read, "
            f"{inputs} of them on the input topics {' and '.join(topics)}"
            + (
                "; if the input's topics have other names, set QRIS_PAYMENT_TOPIC and QRIS_LEDGER_TOPIC)"
                if not inputs
                else ")"
            )
        )
        return 1
    others = [r for r in records if r.topic not in topics]
    if others:  # (a line whose topic is misspelt: a payment or a debit of it left out)
        keyed = sum(1 for r in others if r.key == ref.encode())
        print(
            f"trace: warning: {source}: {len(others)} record(s) of topics other than {' and '.join(topics)} were "
            f"not read ({keyed} keyed '{escape_text(ref)}'); if some are input under another name, set "
            "QRIS_PAYMENT_TOPIC and QRIS_LEDGER_TOPIC to it",
            file=sys.stderr,
        )
    if args.json:
        sys.stdout.buffer.write(codec.dumps(result) + b"\n")
    else:
        print(render(result))
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    s = from_env(os.environ)
    shown = display(s)
    for env, doc in DOCS.values():
        print(f"{env}={shown[env]}\t# {doc}")
    if hazards := refused_at_start(s):
        print(f"settings: the worker refuses these: {'; '.join(hazards)}", file=sys.stderr)
        return 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run(args, _connect(_settings(args)))


def cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import cli as simulate_cli

    settings = from_env(os.environ)
    simulate_cli.fill_from_settings(args, settings)
    client = None
    if getattr(args, "bootstrap", None):
        client = _connect(replace(settings, bootstrap=args.bootstrap))
    return int(simulate_cli.run(args, client))


# -- parser ------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $QRIS_BOOTSTRAP or 127.0.0.1:9092)")


def _params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout-s", type=float, dest="timeout_s", help="T, seconds (default: $QRIS_TIMEOUT_S or 300)")
    p.add_argument("--lateness-s", type=float, dest="lateness_s", help="A, seconds (default: $QRIS_LATENESS_S or 30)")
    p.add_argument(
        "--retention-s", type=float, dest="retention_s", help="R, seconds (default: $QRIS_RETENTION_S or 172800)"
    )
    p.add_argument(
        "--clock-skew-s",
        type=float,
        dest="clock_skew_s",
        help="F, seconds a record may be dated ahead of its Kafka timestamp (default: $QRIS_CLOCK_SKEW_S or 60)",
    )
    p.add_argument(
        "--hold-grace-s", type=float, dest="hold_grace_s", help="G, seconds (default: $QRIS_HOLD_GRACE_S or 900)"
    )
    p.add_argument(
        "--max-hold-s",
        type=float,
        dest="max_hold_s",
        help="H, seconds (default: $QRIS_MAX_HOLD_S or 7200); 0 turns refund holds off",
    )


def _range(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="from_time", type=_time_arg, help="start (Kafka record time): RFC 3339 or epoch ms")
    p.add_argument("--to", dest="to_time", type=_time_arg, help="end, exclusive: RFC 3339 or epoch ms")


def _detector_snapshot(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--detector-snapshot",
        metavar="FILE",
        help="start the burst detector from this snapshot (as `warmup --out FILE` writes it) instead of cold: "
        "the warm-up the live worker restored, to decide as it did (default: cold)",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (the usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_MISTAKE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser. `command`: the subcommand about to be parsed, if known; the options of
    `demo` and `simulate`, which import the simulator (a tenth of a replay's start-up when its
    sources are compiled at each run), are added only for these (and for None: all of them)."""
    parser = _Parser(prog="qris-guard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run the live worker (Faust) on the broker")
    _common(p)
    p.add_argument("--create-topics", action="store_true", help="create missing topics first")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="worker processes on this host, one consumer group (one uses at most one CPU); "
        "each has its own data directory <QRIS_DATA_DIR>/w<i> and web port QRIS_WEB_PORT+i (default 1)",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("topics", help="create the contract's topics (co-partitioned inputs)")
    _common(p)
    p.add_argument("--partitions", type=int, help="partitions for new topics (default $QRIS_PARTITIONS or 4)")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("dump", help="read topics from Kafka into a replay file")
    _common(p)
    _range(p)
    p.add_argument("--topics", nargs="+", help="topics to dump (default: the two input topics)")
    p.add_argument("--out", required=True, help="replay file to write ('-' for stdout)")
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser(
        "copy-inputs",
        help="copy the input topics into new co-partitioned topics with another partition count (to grow)",
        description="Copy the input topics ($QRIS_PAYMENT_TOPIC, $QRIS_LEDGER_TOPIC), up to their end offsets "
        "when it starts (committed records only), into new topics of --to-partitions partitions, created "
        "co-partitioned if missing (existing ones must have that count and be empty). Each record keeps its "
        "value bytes, its Kafka timestamp (as CreateTime) and its headers; its key is its reference (its own "
        "key, else the 'reference' in its value) and its partition the one Kafka's default partitioner "
        "(murmur2) gives that key. A record with no reference to read (not JSON, no 'reference': it is "
        "dead-lettered) keeps no key and goes to its old partition modulo --to-partitions. Order: the old "
        "partitions of each topic are merged by (Kafka timestamp, old partition, offset), each old partition "
        "kept in its offset order, so a reference's records keep their order and each new partition sees its "
        "records in the time order they had. Consumer offsets are not moved: start a worker with a new "
        "QRIS_APP_ID on the new topics, which decides everything again with the same refund_ids (except for a "
        "record that came more than QRIS_LATENESS_S behind its stream: README, Known limits). "
        "Exit 1 when a topic cannot be used or a record was not written.",
    )
    _common(p)
    p.add_argument("--to-payment-topic", required=True, help="the new payment-requests topic")
    p.add_argument("--to-ledger-topic", required=True, help="the new ledger-debits topic")
    p.add_argument("--to-partitions", type=int, required=True, help="partitions of the new topics")
    p.set_defaults(func=cmd_copy_inputs)

    p = sub.add_parser("replay", help="run the core offline over a replay file or the Kafka topics")
    _common(p)
    _params(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--in", dest="input", help="replay file (JSON Lines, CONTRACT.md format)")
    src.add_argument("--from-kafka", action="store_true", help="read the input topics from the broker")
    _range(p)
    p.add_argument("--out", required=True, help="output file of decisions ('-' for stdout)")
    p.add_argument("--drain", action="store_true", help="at the end of input move the watermark to +inf")
    p.add_argument(
        "--jobs",
        type=int,
        help="processes for a replay file, partitions split among them "
        "(default: CPUs, at most 4; 1 = one process, lines in decision order; with holds, or above the "
        "CPUs, no more than the file has partitions, of any topic)",
    )
    _detector_snapshot(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("warmup", help="build the burst detector's state from history and write its snapshot")
    _common(p)
    _params(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--in", dest="input", help="replay file of input records (run through the replay core)")
    src.add_argument("--from-kafka", action="store_true", help="read the signals topic (the live partitions' reports)")
    p.add_argument("--since", type=_duration_s, help="with --from-kafka: only reports of this last period (e.g. 7d)")
    p.add_argument("--to", dest="to_time", type=_time_arg, help="with --from-kafka: reports before this time")
    p.add_argument("--partitions", type=int, help="input partitions (default: the input topics' / the file's)")
    p.add_argument("--out", help="write the snapshot to this file instead of the snapshots topic")
    p.set_defaults(func=cmd_warmup)

    p = sub.add_parser("report", help="summarise decisions for payment operations")
    _common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--in", dest="input", help="output file written by replay")
    src.add_argument("--from-kafka", action="store_true", help="read the output topics from the broker")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the summary as JSON")
    out.add_argument("--csv", action="store_true", help="print the summary as CSV (section, item, count, idr)")
    p.add_argument("--since", type=_time_arg, help="only decisions decided at or after: RFC 3339 or epoch ms")
    p.add_argument("--until", type=_time_arg, help="only decisions decided before: RFC 3339 or epoch ms")
    for scope in ("merchant", "switch", "acquirer", "issuer"):
        p.add_argument(f"--{scope}", help=f"only refunds and alerts of this {scope} id")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("trace", help="explain one reference: its records, effective times, decisions (or why none)")
    _common(p)
    _params(p)
    p.add_argument("reference", help="the payment reference")
    p.add_argument(
        "--escaped",
        action="store_true",
        help="the reference is written in ASCII as the lookup's hints write it: \\uXXXX or \\UXXXXXXXX for a "
        "character, \\\\ for a backslash",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--in", dest="input", help="replay file (the input topics)")
    src.add_argument(
        "--from-kafka", action="store_true", help="read the input topics (every partition) from the broker"
    )
    p.add_argument("--drain", action="store_true", help="as replay --drain: move the watermark to +inf at the end")
    p.add_argument(
        "--all-partitions",
        action="store_true",
        help="replay every partition (slower) so incidents behind holds are known, as in a full replay",
    )
    p.add_argument("--json", action="store_true", help="the facts as JSON, for tools")
    _detector_snapshot(p)
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("settings", help="print the effective QRIS_* settings")
    p.set_defaults(func=cmd_settings)

    p = sub.add_parser("demo", help="the outage scenario end to end on the broker, with a report")
    _common(p)
    if command in (None, "demo"):
        from . import demo

        demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("simulate", help="generate realistic QRIS traffic to Kafka or a replay file")
    if command in (None, "simulate"):
        try:
            from .simulate import cli as simulate_cli

            simulate_cli.add_arguments(p)
        except ImportError as exc:  # pragma: no cover - only while the simulator is absent
            p.add_argument("--unavailable", help=str(exc))
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    command = given[0] if given and not given[0].startswith("-") else None
    args = build_parser(command).parse_args(given)
    try:
        from_env(os.environ)  # an unknown or unusable QRIS_* variable stops every command
        status = int(args.func(args))
        if sys.stdout is not None:  # (None when started with fd 1 closed: nothing to flush)
            sys.stdout.flush()  # (a reader gone raises here, not unseen at exit)
        return status
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line and an exit status
        if isinstance(exc, BrokenPipeError) and stdout_reader_gone():
            # The reader of the output went away (`| head`): not a bug. Quiet, and the status a
            # command killed by SIGPIPE has; stdout goes to /dev/null so the flush at exit does
            # not fail again. (Another pipe broken, a replay job's, is a failure as any other.)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            return EXIT_BROKEN_PIPE
        status, message = _failure(exc)
        if message:
            print(f"qris-guard {args.command}: {message}", file=sys.stderr)
        return status


def _failure(exc: BaseException) -> tuple[int, str]:
    """The exit status and one-line message of a failed command."""
    from .drivers.replayfile import ReplayLineError
    from .security import BrokerRefused, SecurityConfigError

    if isinstance(exc, SystemExit):
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0), ""
        return 1, f"error: {exc.code}"
    if isinstance(exc, BrokerRefused):
        return EXIT_UNAVAILABLE, f"error: {exc}"
    if isinstance(exc, (Mistake, SettingsError, SecurityConfigError, ReplayLineError)):
        return EXIT_MISTAKE, f"error: {exc}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return EXIT_MISTAKE, f"error: {exc.filename}: {exc.strerror or exc}"
    kafka_error = _kafka_error(exc)
    if kafka_error:
        return EXIT_UNAVAILABLE, f"error: Kafka: {kafka_error}"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return EXIT_INTERNAL, f"internal error (a bug, please report it): {type(exc).__name__}: {first}"


def _kafka_error(exc: BaseException) -> str | None:
    """The message of a Kafka client error (kafka-python or aiokafka), else None."""
    module = type(exc).__module__
    if module.startswith(("kafka.", "aiokafka.")):
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None
