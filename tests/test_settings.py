"""Settings: built from QRIS_* variables by a pure function; typos are errors."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from stream.drivers.livesettings import decision_settings, other_settings_warning, settings_header
from stream.settings import (
    DOCS,
    MAX_LEDGER_OWN_ACCOUNTS,
    Settings,
    clock_guard_passes_deadlines,
    from_env,
    hold_outlasts_retention,
    refused_at_start,
    to_env,
)


def test_defaults_match_the_contract() -> None:
    s = from_env({})
    assert (s.timeout_s, s.lateness_s, s.retention_s) == (300.0, 30.0, 172800.0)
    assert (s.params.timeout_ms, s.params.lateness_ms, s.params.retention_ms) == (300_000, 30_000, 172_800_000)
    assert s.payment_topic == "qris.payment-requests" and s.store == "rocksdb://"


def test_variables_are_typed_and_round_trip() -> None:
    s = from_env({"QRIS_TIMEOUT_S": "12.5", "QRIS_PARTITIONS": "8", "QRIS_ALERT_TOPIC": "ops.alerts"})
    assert (s.timeout_s, s.partitions, s.alert_topic) == (12.5, 8, "ops.alerts")
    assert from_env(to_env(s)) == s


def test_a_misspelt_variable_is_an_error_not_a_silent_default() -> None:
    with pytest.raises(ValueError, match="QRIS_TIMEOUT"):
        from_env({"QRIS_TIMEOUT": "10"})
    with pytest.raises(ValueError, match="QRIS_PARTITIONS"):
        from_env({"QRIS_PARTITIONS": "four"})
    from_env({"QRIS_KAFKA_PORT": "9092"})  # the broker script's variables are not ours


def test_every_setting_is_documented() -> None:
    assert set(DOCS) == set(Settings.__dataclass_fields__)
    assert all(env.startswith("QRIS_") and doc for env, doc in DOCS.values())


def test_a_topic_prefix_names_every_topic_and_nothing_else() -> None:
    base = Settings(bootstrap="kafka:9092", partitions=6)
    s = base.with_topic_prefix("run1")
    topics = {f.name: getattr(s, f.name) for f in fields(Settings) if f.name.endswith("_topic")}
    assert set(topics) == {
        "payment_topic",
        "ledger_topic",
        "refund_topic",
        "alert_topic",
        "dead_letter_topic",
        "signals_topic",
        "incidents_topic",
        "snapshots_topic",
    }
    assert all(t.startswith("run1.") for t in topics.values()) and len(set(topics.values())) == 8
    assert (s.bootstrap, s.partitions) == ("kafka:9092", 6)


def test_the_lookup_token_comes_from_the_environment_or_a_file_not_both(tmp_path: object) -> None:
    from pathlib import Path

    from stream.security import read_secret

    with pytest.raises(ValueError, match="at most one of QRIS_API_TOKEN, QRIS_API_TOKEN_FILE"):
        from_env({"QRIS_API_TOKEN": "t", "QRIS_API_TOKEN_FILE": "/run/secrets/api_token"})
    path = Path(str(tmp_path)) / "api_token"
    path.write_text("tok-9f\n")
    s = from_env({"QRIS_API_TOKEN_FILE": str(path)})
    assert read_secret("QRIS_API_TOKEN_FILE", s.api_token, s.api_token_file) == "tok-9f"
    assert not to_env(s).get("QRIS_API_TOKEN") and to_env(s)["QRIS_API_TOKEN_FILE"] == str(path)


@pytest.mark.parametrize(
    ("env", "said"),
    [
        # (One name for both inputs: the worker reads one of them only, and no debit means no refund.)
        ({"QRIS_LEDGER_TOPIC": "qris.payment-requests"}, "QRIS_PAYMENT_TOPIC and QRIS_LEDGER_TOPIC are both"),
        # (An output on an input: each dead letter is read back and dead-lettered again, without end.)
        ({"QRIS_DEAD_LETTER_TOPIC": "qris.payment-requests"}, "QRIS_PAYMENT_TOPIC and QRIS_DEAD_LETTER_TOPIC"),
        ({"QRIS_SIGNALS_TOPIC": "q.x", "QRIS_INCIDENTS_TOPIC": "q.x"}, "QRIS_SIGNALS_TOPIC and QRIS_INCIDENTS_TOPIC"),
        # (Kafka refuses these at the first send, which the worker's producer retries for ever.)
        ({"QRIS_REFUND_TOPIC": "qris.refunds "}, "QRIS_REFUND_TOPIC='qris.refunds ': not a Kafka topic name"),
        ({"QRIS_ALERT_TOPIC": ""}, "QRIS_ALERT_TOPIC='': not a Kafka topic name"),
        ({"QRIS_ALERT_TOPIC": "ops/alerts"}, "not a Kafka topic name"),
        ({"QRIS_ALERT_TOPIC": "a" * 250}, "not a Kafka topic name"),
    ],
)
def test_a_topic_name_kafka_refuses_or_given_two_roles_is_an_error(env: dict[str, str], said: str) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        from_env(env)
    from_env({"QRIS_ALERT_TOPIC": "Ops_Alerts-2." + "a" * 236})  # (249 characters of Kafka's set)


def test_a_retention_the_timeout_reaches_is_refused_with_holds_off_too() -> None:
    # (A refund paid at its deadline is dropped with its reference at once: a settlement a
    # second later cancels nothing. `python -m stream replay` of the simulator's `late` day,
    # 130 cancellations of Rp 9,622,000 with R = 48 h, none with R = 48 and holds off.)
    hazard = hold_outlasts_retention(from_env({"QRIS_MAX_HOLD_S": "0", "QRIS_RETENTION_S": "48"}))
    assert hazard is not None and "QRIS_TIMEOUT_S=300 reaches QRIS_RETENTION_S=48 (holds off" in hazard
    assert hold_outlasts_retention(from_env({"QRIS_MAX_HOLD_S": "0", "QRIS_RETENTION_S": "300"})) is not None
    assert hold_outlasts_retention(from_env({"QRIS_MAX_HOLD_S": "0"})) is None
    assert hold_outlasts_retention(from_env({})) is None


def test_a_clock_guard_at_or_above_the_timeout_minus_the_lateness_is_refused() -> None:
    # (F = 400 s with T = 300 s, A = 30 s: a stream pushed 400 s ahead takes its settlements up to
    # 370 s late, past their deadlines: refunds paid, then cancelled.)
    hazard = clock_guard_passes_deadlines(from_env({"QRIS_CLOCK_SKEW_S": "400"}))
    assert hazard is not None
    assert hazard.startswith("QRIS_CLOCK_SKEW_S=400 reaches QRIS_TIMEOUT_S=300 - QRIS_LATENESS_S=30 = 270:")
    assert clock_guard_passes_deadlines(from_env({"QRIS_CLOCK_SKEW_S": "270"})) is not None
    assert clock_guard_passes_deadlines(from_env({"QRIS_CLOCK_SKEW_S": "269.9"})) is None
    assert clock_guard_passes_deadlines(from_env({})) is None
    # A short T with the default F is refused too; with a guard below T - A it is not.
    short = {"QRIS_TIMEOUT_S": "10", "QRIS_LATENESS_S": "1"}
    assert "QRIS_CLOCK_SKEW_S=60 reaches QRIS_TIMEOUT_S=10" in (clock_guard_passes_deadlines(from_env(short)) or "")
    assert refused_at_start(from_env({**short, "QRIS_CLOCK_SKEW_S": "4"})) == []
    lateness = clock_guard_passes_deadlines(from_env({"QRIS_TIMEOUT_S": "10", "QRIS_LATENESS_S": "10"}))
    assert lateness is not None and lateness.startswith("QRIS_LATENESS_S=10 reaches QRIS_TIMEOUT_S=10")
    # Both refusals at once are both said.
    both = refused_at_start(from_env({"QRIS_CLOCK_SKEW_S": "400", "QRIS_RETENTION_S": "3600"}))
    assert [h.split("=")[0] for h in both] == ["QRIS_MAX_HOLD_S", "QRIS_CLOCK_SKEW_S"]


def test_a_clock_guard_no_further_ahead_than_the_lateness_is_not_refused() -> None:
    # A stream pushed F ahead takes its later records F - A late: with F at most A, none (a record
    # at t' after it counts at max(t', t + F - A) = t'), whatever T - A: the delay a refusal
    # would name is none (or negative) here.
    for t, a, f in (("60", "40", "30"), ("120", "60", "60"), ("100", "60", "40")):
        env = {"QRIS_TIMEOUT_S": t, "QRIS_LATENESS_S": a, "QRIS_CLOCK_SKEW_S": f}
        assert clock_guard_passes_deadlines(from_env(env)) is None, env
    # Past A, and at or above T - A, it is.
    hazard = clock_guard_passes_deadlines(
        from_env({"QRIS_TIMEOUT_S": "60", "QRIS_LATENESS_S": "40", "QRIS_CLOCK_SKEW_S": "41"})
    )
    assert hazard is not None and "by up to 1 s" in hazard


@pytest.mark.parametrize(
    ("var", "value", "most"),
    [
        # (Milliseconds typed for seconds: refunds 8.3 h late; state kept 5.5 years; the guard off.)
        ("QRIS_LATENESS_S", "30000", "expected at most 3600 seconds (1 hour)"),
        ("QRIS_RETENTION_S", "172800000", "expected at most 34560000 seconds (400 days)"),
        ("QRIS_CLOCK_SKEW_S", "60000", "expected at most 3600 seconds (1 hour)"),
        ("QRIS_HOLD_GRACE_S", "900000", "expected at most 86400 seconds (1 day)"),
        ("QRIS_MAX_HOLD_S", "7200000", "expected 0 (holds off) to 604800 seconds (7 days)"),
        ("QRIS_TIMEOUT_S", "300000000", "expected at most 2592000 seconds (30 days)"),
        # (Near 9.3e15 s the saved state's metadata does not fit in 64 bits.)
        ("QRIS_RETENTION_S", "9.3e15", "expected at most 34560000 seconds (400 days)"),
    ],
)
def test_an_event_time_setting_past_its_bound_is_refused_as_milliseconds_typed(var: str, value: str, most: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{var}={float(value)}: {most}; milliseconds typed for seconds?")):
        from_env({var: value})


def test_the_event_time_bounds_themselves_are_accepted() -> None:
    s = from_env(
        {
            "QRIS_LATENESS_S": "3600",
            "QRIS_CLOCK_SKEW_S": "3600",
            "QRIS_HOLD_GRACE_S": "86400",
            "QRIS_RETENTION_S": "34560000",
            "QRIS_TIMEOUT_S": "2592000",
            "QRIS_MAX_HOLD_S": "604800",
        }
    )
    assert (s.lateness_s, s.clock_skew_s, s.hold_grace_s, s.retention_s) == (3600, 3600, 86400, 34_560_000)
    assert refused_at_start(s) == []  # (R above T + H; F well below T - A)


@pytest.mark.parametrize("value", ["2", "5.9", "90.5", "30000"])
def test_a_session_timeout_the_group_or_faust_refuses_is_an_error(value: str) -> None:
    # (2 s: the join failed with InvalidSessionTimeoutError and the worker idled, owning no
    # partition, until stopped; 30000 s: Faust's consumer refused to start, a traceback.)
    with pytest.raises(ValueError, match=f"QRIS_SESSION_TIMEOUT_S={float(value)}: expected 6 to 90 seconds"):
        from_env({"QRIS_SESSION_TIMEOUT_S": value})
    assert from_env({"QRIS_SESSION_TIMEOUT_S": "6"}).session_timeout_s == 6.0
    assert from_env({"QRIS_SESSION_TIMEOUT_S": "90"}).session_timeout_s == 90.0


@pytest.mark.parametrize("value", ["inf", "1e309", "nan", "0"])
def test_a_burst_threshold_no_surprise_reaches_is_an_error(value: str) -> None:
    # (inf opened no incident on the simulator's outage day: 339 refunds of Rp 25,438,500 paid
    # and cancelled again, none with the default, while QRIS_MAX_HOLD_S said holds were on.)
    with pytest.raises(ValueError, match="QRIS_BURST_THRESHOLD=.*: expected a finite number above 0"):
        from_env({"QRIS_BURST_THRESHOLD": value})


def test_the_ledgers_own_accounts_are_a_comma_separated_list_of_account_ids() -> None:
    # Blanks around an id (an env file's `a, b`) are left out, a repeat counts once; by default
    # the list is empty, and every reversal to an account never debited alerts.
    assert from_env({}).params.ledger_own_accounts == frozenset()
    assert from_env({"QRIS_LEDGER_OWN_ACCOUNTS": " "}).params.ledger_own_accounts == frozenset()
    s = from_env({"QRIS_LEDGER_OWN_ACCOUNTS": "GL-SUSPENSE-01, 1990000001,GL-SUSPENSE-01"})
    assert s.params.ledger_own_accounts == frozenset({"GL-SUSPENSE-01", "1990000001"})
    assert from_env(to_env(s)) == s  # (the worker's child processes)
    most = ",".join(f"GL-{i}" for i in range(MAX_LEDGER_OWN_ACCOUNTS))
    assert len(from_env({"QRIS_LEDGER_OWN_ACCOUNTS": most}).params.ledger_own_accounts) == 100
    assert len(from_env({"QRIS_LEDGER_OWN_ACCOUNTS": "7" * 128}).params.ledger_own_accounts) == 1


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("GL-1,,GL-2", "account 2 of 3 is empty"),
        ("GL-1,", "account 2 of 2 is empty"),
        ("GL-1;GL-2" + "x" * 120, "account 1 of 1 is 129 characters, at most 128 allowed"),
        ("GL-1,GL\t2", r"account 2 of 2 contains a control character \(U\+0009\) at position 2"),
        ("GL-\u202e1", r"account 1 of 1 contains a bidirectional formatting character \(U\+202E\)"),
        (",".join(f"GL-{i}" for i in range(101)), "lists 101 accounts: expected at most 100"),
    ],
)
def test_an_own_account_a_record_could_not_name_or_a_list_past_its_bound_is_an_error(value: str, said: str) -> None:
    # The ids are held to the contract's rules for a record's account_id: one no record can
    # carry is a mistake (a separator other than a comma, a stray character). The message names
    # the id by its place, never the id itself (it may be a customer's account pasted in).
    with pytest.raises(ValueError, match=f"QRIS_LEDGER_OWN_ACCOUNTS:? {said}") as got:
        from_env({"QRIS_LEDGER_OWN_ACCOUNTS": value})
    assert "GL-1" not in str(got.value)


def test_a_replay_with_other_ledger_own_accounts_than_the_live_worker_is_told() -> None:
    # The list decides alerts, so the worker stamps it on what it sends (a count and a digest,
    # not the ids) and a replay with another list warns; the same set listed otherwise does not.
    live = decision_settings(Settings(ledger_own_accounts="GL-1,GL-2"))
    assert "GL-1" not in settings_header(Settings(ledger_own_accounts="GL-1,GL-2")).decode()
    warning = other_settings_warning(Settings(), [live])
    assert warning is not None
    assert f"QRIS_LEDGER_OWN_ACCOUNTS: live {live['QRIS_LEDGER_OWN_ACCOUNTS']}, here none" in warning
    assert live["QRIS_LEDGER_OWN_ACCOUNTS"].startswith("2 accounts, digest ")
    assert other_settings_warning(Settings(ledger_own_accounts="GL-1"), [live]) is not None
    assert other_settings_warning(Settings(ledger_own_accounts=" GL-2, GL-1,GL-2"), [live]) is None
