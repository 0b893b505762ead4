"""A user's mistakes with the CLI end in one line on stderr and a non-zero exit, never a
traceback (the CLI run as a subprocess, as a user runs it); `--from/--to` select records of
a replay file as they select them on Kafka."""

from __future__ import annotations

import doctest
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from stream.drivers import replayfile
from stream.drivers.replayfile import KafkaRecord, record_to_line
from tests.conftest import ROOT
from tests.scenario import scenario_records

GOOD_LINE = {
    "topic": "qris.payment-requests",
    "partition": 0,
    "offset": 0,
    "timestamp_ms": 1,
    "key": "R1",
    "value": "{}",
}


def run_cli(
    args: list[str], env: dict[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_")}
    return subprocess.run(
        [sys.executable, "-m", "stream", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns: nothing listens


def write_lines(path: Path, lines: list[object]) -> str:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines))
    return str(path)


def mistakes(tmp: Path) -> list[tuple[str, list[str], dict[str, str], int, str]]:
    """(name, arguments, environment, exit status, what the one line must say)."""
    out = str(tmp / "out.jsonl")
    dead = f"127.0.0.1:{closed_port()}"
    return [
        ("missing file", ["replay", "--in", str(tmp / "nope.jsonl"), "--out", out], {}, 2, "no such file"),
        (
            "bad JSON line",
            ["replay", "--in", write_lines(tmp / "a.jsonl", [GOOD_LINE, b"{oops"]), "--out", out, "--jobs", "1"],
            {},
            2,
            "a.jsonl:2: not a replay record",
        ),
        (
            "key is a number",
            ["replay", "--in", write_lines(tmp / "b.jsonl", [GOOD_LINE, {**GOOD_LINE, "key": 5}]), "--out", out],
            {},
            2,
            'b.jsonl:2: not a replay record: "key" must be string or null, not',
        ),
        (
            "partition missing (parallel replay)",
            [
                "replay",
                "--in",
                write_lines(tmp / "c.jsonl", [{k: v for k, v in GOOD_LINE.items() if k != "partition"}]),
                "--out",
                out,
                "--jobs",
                "2",
            ],
            {},
            2,
            'c.jsonl:1: not a replay record: "partition" is missing',
        ),
        (
            "value_b64 not base64",
            ["replay", "--in", write_lines(tmp / "d.jsonl", [{**GOOD_LINE, "value_b64": "%%"}]), "--out", out],
            {},
            2,
            'd.jsonl:1: not a replay record: "value_b64" is not base64',
        ),
        ("report of a missing file", ["report", "--in", str(tmp / "nope.jsonl")], {}, 2, "nope.jsonl"),
        (
            "warmup of fewer partitions than the file's",
            [
                "warmup",
                "--in",
                write_lines(tmp / "w.jsonl", [GOOD_LINE, {**GOOD_LINE, "partition": 3, "offset": 1}]),
                "--partitions",
                "2",
                "--out",
                str(tmp / "w.snapshot"),
            ],
            {},
            2,
            "--partitions 2: the replay file has records of input partition(s) 3 beyond them",
        ),
        ("dump from past year 9999", ["dump", "--from", "9" * 30, "--out", out], {}, 2, "outside the years 0000-9999"),
        ("report since 5,000 digits", ["report", "--in", out, "--since", "9" * 5000], {}, 2, "(5000 digits)"),
        (
            "report of an input file",
            ["report", "--in", write_lines(tmp / "e.jsonl", [b"[1, 2]"])],
            {},
            2,
            "e.jsonl:1: not an output line of replay",
        ),
        (
            "report of an output line missing a field",
            [
                "report",
                "--in",
                write_lines(tmp / "f.jsonl", [{"topic": "qris.refunds", "value": {"type": "refund.requested"}}]),
            ],
            {},
            2,
            'f.jsonl:1: not an output line of replay: a refunds value needs "refund_id"',
        ),
        (
            "report of output topics named otherwise than configured",
            ["report", "--in", write_lines(tmp / "g.jsonl", [{"topic": "bank.qris.refunds", "value": {}}])],
            {},
            2,
            "g.jsonl: no line is of the configured output topics (configured: QRIS_REFUND_TOPIC=qris.refunds",
        ),
        ("unknown setting", ["settings"], {"QRIS_TIMEOUT": "10"}, 2, "did you mean QRIS_TIMEOUT_S?"),
        (
            "unknown setting stops replay too",
            ["replay", "--in", str(tmp / "x"), "--out", out],
            {"QRIS_LATENES_S": "1"},
            2,
            "did you mean QRIS_LATENESS_S?",
        ),
        ("not a number", ["settings"], {"QRIS_PARTITIONS": "four"}, 2, "QRIS_PARTITIONS='four': expected an integer"),
        (
            "a timeout below a millisecond",
            ["replay", "--in", str(tmp / "x"), "--out", out, "--timeout-s", "0.0004"],
            {},
            2,
            "QRIS_TIMEOUT_S=0.0004: expected at least 0.001 seconds",
        ),
        (
            "a hold below a millisecond (holds off in disguise)",
            ["settings"],
            {"QRIS_MAX_HOLD_S": "0.0004"},
            2,
            "QRIS_MAX_HOLD_S=0.0004: expected at least 0.001 seconds",
        ),
        ("bad protocol", ["settings"], {"QRIS_SECURITY_PROTOCOL": "TLS"}, 2, "QRIS_SECURITY_PROTOCOL='TLS'"),
        # (The worker would read a store's typo as RocksDB, and these two's unknown values as their defaults.)
        ("store typo", ["settings"], {"QRIS_STORE": "memroy://"}, 2, "QRIS_STORE='memroy://': expected rocksdb://"),
        (
            "store path",
            ["settings"],
            {"QRIS_STORE": "rocksdb:///var/x"},
            2,
            "expected rocksdb:// (under QRIS_DATA_DIR)",
        ),
        ("log format", ["settings"], {"QRIS_LOG_FORMAT": "yaml"}, 2, "QRIS_LOG_FORMAT='yaml': expected text or json"),
        ("uvloop", ["settings"], {"QRIS_UVLOOP": "7"}, 2, "QRIS_UVLOOP=7: expected 1 or 0"),
        # (A refund paid at a hold's end, past the retention, could not be cancelled: README, Settings.)
        (
            "hold past retention",
            ["worker", "--bootstrap", dead],
            {"QRIS_RETENTION_S": "3600"},
            2,
            "QRIS_MAX_HOLD_S=7200 with QRIS_TIMEOUT_S=300 reaches QRIS_RETENTION_S=3600",
        ),
        ("hold past retention: settings", ["settings"], {"QRIS_RETENTION_S": "3600"}, 2, "the worker refuses these"),
        # (A stream pushed F ahead takes its settlements up to F - A late, past their deadlines.)
        (
            "clock guard past the timeout",
            ["worker", "--bootstrap", dead],
            {"QRIS_CLOCK_SKEW_S": "400"},
            2,
            "QRIS_CLOCK_SKEW_S=400 reaches QRIS_TIMEOUT_S=300 - QRIS_LATENESS_S=30 = 270",
        ),
        (
            "clock guard past a short timeout: settings",
            ["settings"],
            {"QRIS_TIMEOUT_S": "10", "QRIS_LATENESS_S": "1"},
            2,
            "the worker refuses these: QRIS_CLOCK_SKEW_S=60 reaches QRIS_TIMEOUT_S=10",
        ),
        (
            "lateness in milliseconds",
            ["replay", "--in", str(tmp / "x"), "--out", out, "--lateness-s", "30000"],
            {},
            2,
            "QRIS_LATENESS_S=30000.0: expected at most 3600 seconds (1 hour); milliseconds typed for seconds?",
        ),
        ("bad --from", ["replay", "--in", "x", "--out", out, "--from", "yesterday"], {}, 2, "--from"),
        ("no command", [], {}, 2, "required"),
        ("unreachable broker: topics", ["topics", "--bootstrap", dead], {}, 69, f"cannot reach Kafka at {dead}"),
        ("unreachable broker: dump", ["dump", "--bootstrap", dead, "--out", out], {}, 69, "cannot reach Kafka"),
        (
            "unreachable broker: replay --from-kafka",
            ["replay", "--from-kafka", "--bootstrap", dead, "--out", out],
            {},
            69,
            "cannot reach Kafka",
        ),
        ("unreachable broker: worker", ["worker", "--bootstrap", dead], {}, 69, "cannot reach Kafka"),
        (
            "password file missing",
            ["topics", "--bootstrap", dead],
            {
                "QRIS_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "QRIS_SASL_MECHANISM": "SCRAM-SHA-512",
                "QRIS_SASL_USERNAME": "qris",
                "QRIS_SASL_PASSWORD_FILE": str(tmp / "no-password"),
            },
            2,
            "QRIS_SASL_PASSWORD_FILE=",
        ),
    ]


@pytest.mark.slow
def test_every_mistake_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    failures = []
    for name, args, env, status, said in mistakes(tmp_path):
        done = run_cli(args, env)
        lines = done.stderr.strip().splitlines()
        ok = done.returncode == status and len(lines) == 1 and said in lines[0] and "Traceback" not in done.stderr
        if not ok:
            failures.append(f"{name}: exit {done.returncode} (want {status}), stderr:\n{done.stderr}")
    assert not failures, "\n\n".join(failures)


def test_settings_never_print_a_secret(tmp_path: Path) -> None:
    done = run_cli(
        ["settings"],
        {
            "QRIS_SECURITY_PROTOCOL": "SASL_SSL",
            "QRIS_SASL_MECHANISM": "SCRAM-SHA-512",
            "QRIS_SASL_USERNAME": "qris",
            "QRIS_SASL_PASSWORD": "hunter2-secret",
        },
    )
    assert done.returncode == 0 and "hunter2-secret" not in done.stdout
    assert "QRIS_SASL_PASSWORD=********" in done.stdout and "QRIS_SASL_USERNAME=qris" in done.stdout


def test_time_range_doctest() -> None:
    if not (replayfile.__file__ or "").endswith(".py"):
        pytest.skip("compiled by mypyc: doctest finds no examples in compiled functions (runs on the sources)")
    failures, tried = doctest.testmod(replayfile, raise_on_error=False, verbose=False)
    assert tried and not failures


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_from_to_with_a_replay_file_select_by_record_timestamp(tmp_path: Path, jobs: str) -> None:
    """Timestamps rise with the file here, so Kafka's selection is [from, to) exactly: the
    replay of the selection equals the replay of a file holding only those records."""
    records = [r._replace(timestamp_ms=1_000 * i) for i, r in enumerate(scenario_records(4))]
    lo, hi = 1_000 * (len(records) // 4), 1_000 * (3 * len(records) // 4)
    full = tmp_path / "full.jsonl"
    part = tmp_path / "part.jsonl"
    write_lines(full, [record_to_line(r) for r in records])
    chosen: list[KafkaRecord] = [r for r in records if r.timestamp_ms is not None and lo <= r.timestamp_ms < hi]
    write_lines(part, [record_to_line(r) for r in chosen])
    args = ["replay", "--drain", "--jobs", jobs, "--out"]
    ranged = run_cli([*args, str(tmp_path / "ranged.out"), "--in", str(full), "--from", str(lo), "--to", str(hi)])
    whole = run_cli([*args, str(tmp_path / "whole.out"), "--in", str(full)])
    expected = run_cli([*args, str(tmp_path / "expected.out"), "--in", str(part)])
    assert ranged.returncode == whole.returncode == expected.returncode == 0, ranged.stderr
    got = (tmp_path / "ranged.out").read_bytes()
    assert got == (tmp_path / "expected.out").read_bytes() and got
    assert got != (tmp_path / "whole.out").read_bytes()


@pytest.mark.parametrize(
    "command",
    [
        ["replay", "--in", "DAY", "--out", "-", "--drain", "--jobs", "1"],
        # The parent copies the jobs' outputs in 1 MiB writes; the environment's threshold
        # keeps burst alerts (written after the copy) out, so the copy is the last write.
        ["replay", "--in", "DAY", "--out", "-", "--drain", "--jobs", "2", "--max-hold-s", "0"],
        ["simulate", "--scenario", "normal", "--minutes", "3", "--out", "-"],
    ],
    ids=["replay-jobs-1", "replay-jobs-2", "simulate"],
)
def test_a_reader_that_stops_reading_ends_the_command_with_141_not_0_or_a_bug(
    command: list[str], tmp_path: Path
) -> None:
    """`... --out - | head -c N`: the reader closes the pipe in the middle of a large
    write. The command ends quietly with the status of a command killed by SIGPIPE: not an
    internal error (70) with a traceback, and not 0 with its output cut short (a large write to
    a closed pipe returns a short count without raising)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_")}
    day = tmp_path / "day.jsonl"
    sim = run_cli(["simulate", "--scenario", "outage", "--seed", "3", "--minutes", "20", "--out", str(day)])
    assert sim.returncode == 0, sim.stderr
    args = [sys.executable, "-m", "stream", *[str(day) if a == "DAY" else a for a in command]]
    env = {**base, "QRIS_BURST_THRESHOLD": "1000000"}
    whole = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert whole.returncode == 0 and len(whole.stdout) > 400_000, whole.stderr
    # Closed 200 kB before the end: inside the last write, after which nothing would raise.
    wanted = len(whole.stdout) - 200_000
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(wanted) == whole.stdout[:wanted]
    proc.stdout.close()
    status = proc.wait(timeout=60)
    err = proc.stderr.read().decode()
    assert status == 141 and "Traceback" not in err and "internal error" not in err, (status, err)


def test_simulate_writes_to_the_configured_topics_and_partitions() -> None:
    """The simulator's defaults are the worker's settings: `QRIS_PAYMENT_TOPIC`, ..., and
    `QRIS_PARTITIONS`, not the contract's default topics whatever they say."""
    env = {"QRIS_PAYMENT_TOPIC": "t.pay", "QRIS_LEDGER_TOPIC": "t.led", "QRIS_PARTITIONS": "8"}
    done = run_cli(["simulate", "--scenario", "normal", "--minutes", "3", "--out", "-"], env)
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(x) for x in done.stdout.splitlines()]
    assert {x["topic"] for x in lines} == {"t.pay", "t.led"}
    assert {x["partition"] for x in lines} == set(range(8))
    given = run_cli(["simulate", "--minutes", "3", "--partitions", "2", "--payment-topic", "p", "--out", "-"], env)
    assert {(x["topic"], x["partition"]) for x in map(orjson.loads, given.stdout.splitlines())} == {
        (t, p) for t in ("p", "t.led") for p in (0, 1)
    }


def test_a_broken_pipe_to_a_replay_job_is_a_failure_not_a_closed_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `--jobs 2` job killed (as by the OOM killer) after sending its signals breaks the
    parent's pipe to it. That is a failure (70, said on stderr), not a reader that closed the
    output (141, quiet): the output file is incomplete."""
    import multiprocessing.connection

    from stream.cli import main
    from stream.drivers import parallel

    def dying_job(conn: multiprocessing.connection.Connection, *_args: object) -> None:
        conn.send(("signals", (parallel.codec.dumps([]), [])))
        os._exit(9)

    monkeypatch.setattr(parallel, "_two_pass_job", dying_job)
    monkeypatch.setattr(parallel, "_one_pass", lambda *a, **k: None)  # the two-pass path
    day = tmp_path / "day.jsonl"
    assert run_cli(["simulate", "--scenario", "outage", "--minutes", "5", "--out", str(day)]).returncode == 0
    status = main(["replay", "--in", str(day), "--out", str(tmp_path / "out.jsonl"), "--jobs", "2", "--drain"])
    assert status == 70 and "internal error" in capsys.readouterr().err  # (a broken pipe or an early EOF)


def test_a_command_started_with_stdout_closed_still_succeeds(tmp_path: Path) -> None:
    """A scheduler may start a command with fd 1 closed (Python's stdout is then None); a replay
    to a file has nothing to say on it and ends 0, not 70 after its work is done."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("QRIS_")}
    day, out = tmp_path / "day.jsonl", tmp_path / "out.jsonl"
    assert run_cli(["simulate", "--scenario", "outage", "--minutes", "5", "--out", str(day)]).returncode == 0
    done = subprocess.run(
        [sys.executable, "-m", "stream", "replay", "--in", str(day), "--out", str(out), "--drain"],
        cwd=ROOT,
        env=base,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.close(1),  # noqa: PLW1509 - only closes the child's stdout
    )
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0


@pytest.mark.parametrize(
    ("refused", "warning", "accepted"),
    [
        (
            ["--retention-s", "3600"],
            "QRIS_MAX_HOLD_S=7200 with QRIS_TIMEOUT_S=300 reaches QRIS_RETENTION_S=3600",
            ["--retention-s", "7501"],
        ),
        (
            ["--clock-skew-s", "400"],
            "QRIS_CLOCK_SKEW_S=400 reaches QRIS_TIMEOUT_S=300 - QRIS_LATENESS_S=30",
            ["--timeout-s", "10", "--lateness-s", "1", "--clock-skew-s", "4"],
        ),
    ],
    ids=["hold_past_the_retention", "clock_guard_past_the_timeout"],
)
def test_replay_with_settings_the_worker_refuses_warns_and_decides(
    tmp_path: Path, refused: list[str], warning: str, accepted: list[str]
) -> None:
    # Replay answers what the settings would decide: a warning, not a refusal (the worker refuses).
    data = tmp_path / "in.jsonl"
    data.write_bytes(b"")
    out = tmp_path / "out.jsonl"
    r = run_cli(["replay", "--in", str(data), "--out", str(out), *refused], {})
    assert r.returncode == 0
    assert f"replay: warning: {warning}" in r.stderr
    r = run_cli(["replay", "--in", str(data), "--out", str(out), *accepted], {})
    assert r.returncode == 0 and warning.split("=")[0] not in r.stderr


def test_replay_says_how_many_jobs_ran_when_the_file_has_fewer_partitions(tmp_path: Path) -> None:
    # (Jobs without a partition of the file are not started, and the summary says how many ran.)
    data = write_lines(tmp_path / "in.jsonl", [record_to_line(r) for r in scenario_records(3)])
    parts = {r.partition for r in scenario_records(3)}
    out = tmp_path / "out.jsonl"
    r = run_cli(["replay", "--in", data, "--out", str(out), "--jobs", "1000", "--drain"], {})
    assert r.returncode == 0, r.stderr
    assert f"({len(parts)} of 1000 jobs: the others had no partition in the file)" in r.stderr
    one = tmp_path / "one.jsonl"
    assert run_cli(["replay", "--in", data, "--out", str(one), "--jobs", "1", "--drain"], {}).returncode == 0
    assert sorted(out.read_bytes().splitlines()) == sorted(one.read_bytes().splitlines())


def test_settings_says_the_worker_refuses_a_clock_guard_past_the_timeout() -> None:
    r = run_cli(["settings"], {"QRIS_CLOCK_SKEW_S": "270"})
    assert r.returncode == 2 and "settings: the worker refuses these: QRIS_CLOCK_SKEW_S=270 reaches" in r.stderr
    assert run_cli(["settings"], {"QRIS_CLOCK_SKEW_S": "200"}).returncode == 0


def test_a_file_written_by_dump_replay_or_trace_is_its_writers_only(tmp_path: Path) -> None:
    # It holds account ids and payments: not readable by the host's other users when created.
    import stat

    from stream.cli import _open_out

    old = os.umask(0o022)
    try:
        with _open_out(str(tmp_path / "sub" / "dump.jsonl")) as f:
            f.write(b"{}\n")
    finally:
        os.umask(old)
    made = tmp_path / "sub" / "dump.jsonl"
    assert stat.S_IMODE(made.stat().st_mode) == 0o600 and made.read_bytes() == b"{}\n"


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_file_of_other_topics_names_is_said_by_replay_and_trace_not_replayed_as_nothing(
    jobs: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A dump made with a topic prefix, replayed in a shell without it: every line skipped.
    from stream.cli import main

    path = tmp_path / "other.jsonl"
    line = {
        "topic": "bank.payment-requests",
        "partition": 0,
        "offset": 0,
        "timestamp_ms": 1,
        "key": "R1",
        "value": "{}",
    }
    path.write_bytes(orjson.dumps(line) + b"\n")
    assert main(["replay", "--in", str(path), "--out", str(tmp_path / "out.jsonl"), "--jobs", jobs]) == 0
    err = capfd.readouterr().err
    assert "no record on the input topics qris.payment-requests and qris.ledger-debits" in err
    assert "set QRIS_PAYMENT_TOPIC and QRIS_LEDGER_TOPIC" in err
    assert main(["trace", "R1", "--in", str(path)]) == 1
    said = capfd.readouterr().out
    assert "1 records read, 0 of them on the input topics" in said and "QRIS_PAYMENT_TOPIC" in said


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_records_of_other_topics_beside_the_inputs_are_counted_on_stderr_not_dropped_in_silence(
    jobs: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # One line's topic misspelt: its debit is not read, and the replay must say so, or a
    # payment's debit disappears from the decisions with exit 0 and nothing on stderr.
    from stream.cli import main

    good = {"topic": "qris.payment-requests", "partition": 0, "offset": 0, "timestamp_ms": 1, "key": "R1"}
    misspelt = {**good, "topic": "qris.ledger-debit", "partition": 1}
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"".join(orjson.dumps({**x, "value": "{}"}) + b"\n" for x in (good, misspelt)))
    assert main(["replay", "--in", str(path), "--out", str(tmp_path / "out.jsonl"), "--jobs", jobs]) == 0
    err = capfd.readouterr().err
    assert "1 record(s) of topics other than qris.payment-requests and qris.ledger-debits were not read" in err
    assert "no record on the input topics" not in err
    assert main(["trace", "R1", "--in", str(path)]) == 0
    err = capfd.readouterr().err
    assert "1 record(s) of topics other than qris.payment-requests and qris.ledger-debits were not read" in err
    assert "(1 keyed 'R1')" in err


def test_dump_writes_a_partial_file_only_for_a_regular_file_and_leaves_none_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stream.drivers.kafkaread as kafkaread
    import stream.topics as topics
    from stream import cli
    from stream.drivers.replayfile import KafkaRecord

    rec = KafkaRecord("qris.payment-requests", 0, 0, 1, b"R1", b"{}")
    broken = [False]

    def read_topics(*_a: object, **_k: object) -> Iterator[KafkaRecord]:
        yield rec
        if broken[0]:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_connect", lambda s: s)
    monkeypatch.setattr(topics, "check_copartitioned", lambda s: 1)
    monkeypatch.setattr(kafkaread, "read_topics", read_topics)
    target = tmp_path / "dumps" / "day.jsonl"
    target.parent.mkdir()
    target.write_bytes(b"")
    link = tmp_path / "current.jsonl"
    link.symlink_to(target)
    assert cli.main(["dump", "--out", str(link)]) == 0
    assert link.is_symlink() and target.read_bytes().count(b"\n") == 1  # written through the link
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    import threading

    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert cli.main(["dump", "--out", str(fifo)]) == 0
    reader.join(10)
    assert got and got[0].count(b"\n") == 1 and stat_is_fifo(fifo)
    broken[0] = True
    out = tmp_path / "new.jsonl"
    with pytest.raises(KeyboardInterrupt):
        cli.cmd_dump(cli.build_parser().parse_args(["dump", "--out", str(out)]))
    assert not out.exists() and not (tmp_path / "new.jsonl.partial").exists()


def stat_is_fifo(path: Path) -> bool:
    import stat

    return stat.S_ISFIFO(os.stat(path).st_mode)
