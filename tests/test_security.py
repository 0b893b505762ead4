"""Kafka security settings: what each client library is given, checked without a broker (the
Kafka tier connects over SASL_SSL for real). PLAIN, SCRAM-SHA-256 and OAUTHBEARER are tested
here for the options they produce; the live test uses SCRAM-SHA-512."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from stream.security import (
    SecurityConfigError,
    SyncTokenFile,
    TokenFile,
    aiokafka_config,
    faust_credentials,
    kafka_python_config,
    oauth_token,
    ssl_context,
    topic_configs,
)
from stream.settings import DOCS, Settings, SettingsError, display, from_env, to_env
from stream.topics import signals_topic


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real CA certificate (PEM), as a bank's ops team would hand over."""
    d = tmp_path_factory.mktemp("ca")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA"]
        + ["-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem")],
        check=True,
        capture_output=True,
    )
    return str(d / "ca.pem")


def secret_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text + "\n")
    return str(path)


def faust_auth(s: Settings) -> dict[str, Any]:
    """What Faust hands its aiokafka clients for the settings' credentials."""
    return dict(credentials_to_aiokafka_auth(faust_credentials(s)))


def without(config: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in names}


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    s = from_env({})
    assert kafka_python_config(s) == {"bootstrap_servers": ["127.0.0.1:9092"], "security_protocol": "PLAINTEXT"}
    assert aiokafka_config(s) == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    assert faust_credentials(s) is None and faust_auth(s) == {"security_protocol": "PLAINTEXT"}
    assert (s.replication_factor, s.min_insync_replicas, topic_configs(s)) == (1, 0, {})


def test_scram_over_tls_every_client_gets_the_same_credentials(tmp_path: Path, ca_file: str) -> None:
    s = from_env(
        {
            "QRIS_BOOTSTRAP": "k1:9094,k2:9094",
            "QRIS_SECURITY_PROTOCOL": "SASL_SSL",
            "QRIS_SASL_MECHANISM": "SCRAM-SHA-512",
            "QRIS_SASL_USERNAME": "qris",
            "QRIS_SASL_PASSWORD_FILE": secret_file(tmp_path, "pw", "s3cret"),
            "QRIS_SSL_CAFILE": ca_file,
        }
    )
    kp = kafka_python_config(s)
    ak = aiokafka_config(s)
    fa = faust_auth(s)
    assert kp["bootstrap_servers"] == ["k1:9094", "k2:9094"] and ak["bootstrap_servers"] == "k1:9094,k2:9094"
    for config in (kp, ak, fa):
        assert config["security_protocol"] == "SASL_SSL"
        assert config["sasl_mechanism"] == "SCRAM-SHA-512"
        assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("qris", "s3cret")
        ctx = config["ssl_context"]
        assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "test CA"),),)]
    assert without(ak, "bootstrap_servers", "ssl_context") == without(fa, "ssl_context")


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_sasl_without_tls_has_no_ssl_context(mechanism: str) -> None:
    s = Settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism, sasl_username="u", sasl_password="p")
    for config in (kafka_python_config(s), aiokafka_config(s), faust_auth(s)):
        assert config["security_protocol"] == "SASL_PLAINTEXT" and config["sasl_mechanism"] == mechanism
        assert config.get("ssl_context") is None and config["sasl_plain_password"] == "p"


def test_tls_only_checks_host_names_unless_told_not_to(ca_file: str) -> None:
    s = Settings(security_protocol="SSL", ssl_cafile=ca_file)
    assert faust_auth(s)["security_protocol"] == "SSL" and kafka_python_config(s)["ssl_check_hostname"] is True
    loose = replace(s, ssl_check_hostname=0)
    ctx = ssl_context(loose)
    assert ctx is not None and not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert kafka_python_config(loose)["ssl_check_hostname"] is False


def test_oauthbearer_token_file_is_read_again_at_every_authentication(tmp_path: Path, ca_file: str) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    s = Settings(
        security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", sasl_oauth_token_file=str(token), ssl_cafile=ca_file
    )
    sync = kafka_python_config(s)["sasl_oauth_token_provider"]
    aio = aiokafka_config(s)["sasl_oauth_token_provider"]
    via_faust = faust_auth(s)
    assert isinstance(sync, SyncTokenFile) and isinstance(aio, TokenFile)
    assert via_faust["sasl_mechanism"] == "OAUTHBEARER" and via_faust["security_protocol"] == "SASL_SSL"
    assert sync.token() == "first" and asyncio.run(aio.token()) == "first"
    token.write_text("renewed")
    assert sync.token() == "renewed" and asyncio.run(via_faust["sasl_oauth_token_provider"].token()) == "renewed"
    token.write_text("")
    with pytest.raises(SecurityConfigError, match="is empty"):
        sync.token()


def test_files_that_cannot_be_used_are_named_in_one_line(tmp_path: Path) -> None:
    base = Settings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u", sasl_password_file="/nope")
    with pytest.raises(SecurityConfigError, match=r"QRIS_SASL_PASSWORD_FILE=\(no file there; .*\): cannot read it"):
        kafka_python_config(base)
    unreadable = tmp_path / "a-directory"
    unreadable.mkdir()  # (a path that is there: named as given)
    with pytest.raises(SecurityConfigError, match=f"QRIS_SASL_PASSWORD_FILE={unreadable}: cannot read it"):
        kafka_python_config(replace(base, sasl_password_file=str(unreadable)))
    base = replace(base, sasl_password="p", sasl_password_file="")
    not_pem = secret_file(tmp_path, "ca.pem", "not a certificate")
    with pytest.raises(SecurityConfigError, match="QRIS_SSL_CAFILE=.*not a readable PEM CA file"):
        aiokafka_config(replace(base, ssl_cafile=not_pem))
    with pytest.raises(SecurityConfigError, match="cannot load the client certificate"):
        ssl_context(replace(base, ssl_certfile=not_pem))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QRIS_SECURITY_PROTOCOL": "TLS"}, "QRIS_SECURITY_PROTOCOL='TLS': expected one of PLAINTEXT, SSL"),
        ({"QRIS_SECURITY_PROTOCOL": "SASL_SSL"}, "QRIS_SASL_MECHANISM='': SASL_SSL needs one of"),
        (
            {"QRIS_SECURITY_PROTOCOL": "SASL_SSL", "QRIS_SASL_MECHANISM": "SCRAM-SHA-512", "QRIS_SASL_PASSWORD": "p"},
            "QRIS_SASL_USERNAME is required",
        ),
        (
            {"QRIS_SECURITY_PROTOCOL": "SASL_SSL", "QRIS_SASL_MECHANISM": "PLAIN", "QRIS_SASL_USERNAME": "u"},
            "exactly one of QRIS_SASL_PASSWORD, QRIS_SASL_PASSWORD_FILE",
        ),
        (
            {"QRIS_SECURITY_PROTOCOL": "SASL_SSL", "QRIS_SASL_MECHANISM": "OAUTHBEARER"},
            "QRIS_SASL_OAUTH_TOKEN_FILE is required",
        ),
        ({"QRIS_SSL_CAFILE": "/ca.pem"}, "QRIS_SSL_CAFILE set but QRIS_SECURITY_PROTOCOL=PLAINTEXT uses no TLS"),
        ({"QRIS_SASL_USERNAME": "u"}, "QRIS_SASL_USERNAME set but QRIS_SECURITY_PROTOCOL=PLAINTEXT uses no SASL"),
        ({"QRIS_SSL_CHECK_HOSTNAME": "yes"}, "QRIS_SSL_CHECK_HOSTNAME='yes': expected an integer"),
        ({"QRIS_REPLICATION_FACTOR": "0"}, "QRIS_REPLICATION_FACTOR=0: expected 1 or more"),
        ({"QRIS_REPLICATION_FACTOR": "3", "QRIS_MIN_INSYNC_REPLICAS": "4"}, "QRIS_MIN_INSYNC_REPLICAS=4"),
        ({"QRIS_LOG_LEVEL": "loud"}, "QRIS_LOG_LEVEL='loud'"),
        ({"QRIS_TIMEOUT_S": "-5"}, "QRIS_TIMEOUT_S=-5.0: expected a number of seconds above 0"),
        ({"QRIS_TIMEOUT_S": "300000000"}, "QRIS_TIMEOUT_S=300000000.0: expected at most 2592000 seconds (30 days)"),
        ({"QRIS_PROBE_AGE_S": "1801"}, "QRIS_PROBE_AGE_S=1801.0: expected at most 1800 seconds (30 minutes)"),
        ({"QRIS_LATENESS_S": "nan"}, "QRIS_LATENESS_S=nan: expected a number of seconds, 0 or more"),
        ({"QRIS_BATCH_MAX": "0"}, "QRIS_BATCH_MAX=0: expected 1 or more"),
        ({"QRIS_BOOTSTRAP": "kafka:90x2"}, "QRIS_BOOTSTRAP='kafka:90x2': expected host:port"),
        ({"QRIS_BOOTSTRAP": "k1:9092,"}, "expected host:port[,host:port]"),
        ({"QRIS_SASL_PASWORD": "p"}, "unknown setting QRIS_SASL_PASWORD (did you mean QRIS_SASL_PASSWORD?)"),
    ],
)
def test_unusable_security_settings_are_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        from_env(env)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_secrets_are_never_shown(tmp_path: Path) -> None:
    s = from_env(
        {
            "QRIS_SECURITY_PROTOCOL": "SASL_SSL",
            "QRIS_SASL_MECHANISM": "SCRAM-SHA-256",
            "QRIS_SASL_USERNAME": "qris",
            "QRIS_SASL_PASSWORD": "hunter2",
            "QRIS_SSL_CERTFILE": "/c.pem",
            "QRIS_SSL_KEY_PASSWORD": "k3y",
        }
    )
    shown = display(s)
    assert shown["QRIS_SASL_PASSWORD"] == shown["QRIS_SSL_KEY_PASSWORD"] == "********"
    assert shown["QRIS_SASL_USERNAME"] == "qris" and display(Settings())["QRIS_SASL_PASSWORD"] == ""
    assert "hunter2" not in repr(s) and "k3y" not in repr(s)
    assert from_env(to_env(s)) == s  # child processes still get them
    assert {"QRIS_SECURITY_PROTOCOL", "QRIS_SASL_PASSWORD_FILE", "QRIS_MIN_INSYNC_REPLICAS"} <= {
        v for v, _ in DOCS.values()
    }


def test_topics_the_project_creates_take_replication_and_min_insync() -> None:
    s = Settings(replication_factor=3, min_insync_replicas=2)
    t = signals_topic("x.signals", s)
    assert (t.replication_factor, t.topic_configs) == (3, {"retention.ms": "-1", "min.insync.replicas": "2"})


def test_the_worker_app_binds_where_told_with_faust_pages_off(tmp_path: Path) -> None:
    from stream.worker.app import build_app

    s = Settings(
        store="memory://",
        data_dir=str(tmp_path),
        replication_factor=2,
        min_insync_replicas=1,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="qris",
        sasl_password="p",
    )
    app, _shell = build_app(s)
    conf = app.conf
    assert (conf.web_bind, conf.web_host) == ("127.0.0.1", "127.0.0.1")
    assert not (conf.web_tables_enabled or conf.web_router_enabled or conf.web_graph_enabled or conf.web_stats_enabled)
    assert app.web.blueprints._enabled == []  # no Faust page at all, not even `/`
    assert conf.topic_replication_factor == 2
    assert credentials_to_aiokafka_auth(conf.broker_credentials)["sasl_mechanism"] == "SCRAM-SHA-512"
    assert len(app.tables) == 0  # the state is the project's own store, not a Faust table
    # ... and Faust's co-partitioned assignor stays in charge of the group (without a table it
    # takes it only with standby replicas configured; else aiokafka's round robin, which would
    # split partition p of the two input topics between workers).
    assert conf.table_standby_replicas > 0
    from stream.topics import state_changelog_topic

    changelog = state_changelog_topic(s, 4)
    assert changelog.name == "qris-guard-state-changelog" and changelog.num_partitions == 4
    assert changelog.topic_configs == {
        "min.insync.replicas": "1",
        "cleanup.policy": "compact",
        "segment.bytes": str(128 * 1024 * 1024),  # (compacted only once a segment closes)
        "segment.ms": "3600000",
    }


class _Metadata:
    def __init__(self, answer: str) -> None:
        self.answer = answer

    async def fetch_all_metadata(self) -> None:
        if self.answer == "hang":
            await asyncio.sleep(3600)
        if self.answer == "refuse":
            raise OSError("Unable to get cluster metadata over all known brokers")


def _app(answer: str, assigned: list[str], rebalancing: bool = False) -> Any:
    from types import SimpleNamespace

    from faust.types import TP

    return SimpleNamespace(
        producer=SimpleNamespace(_producer=SimpleNamespace(client=_Metadata(answer))),
        rebalancing=rebalancing,
        in_recovery=False,
        consumer=SimpleNamespace(assignment=lambda: {TP(t, 0) for t in assigned}),
    )


@pytest.mark.parametrize(
    ("answer", "assigned", "rebalancing", "reason"),
    [
        ("ok", ["qris.payment-requests"], False, None),
        ("refuse", ["qris.payment-requests"], False, "no answer from the broker"),
        ("hang", ["qris.payment-requests"], False, "no answer from the broker"),
        ("ok", [], False, "no input partition is assigned"),
        ("ok", ["qris-guard-reconciliation-state-changelog"], False, "no input partition is assigned"),
        ("ok", ["qris.ledger-debits"], True, "rebalancing"),
    ],
)
def test_readiness_needs_the_broker_and_an_input_partition(
    answer: str, assigned: list[str], rebalancing: bool, reason: str | None
) -> None:
    from stream.worker.app import not_ready_reason

    got = asyncio.run(not_ready_reason(_app(answer, assigned, rebalancing), Settings(), timeout_s=0.2))
    assert got == reason if reason is None else (got is not None and reason in got)


def test_security_doctests() -> None:
    import doctest

    import stream.security
    import stream.settings

    for module in (stream.security, stream.settings):
        failures, tried = doctest.testmod(module, raise_on_error=False, verbose=False)
        assert tried and not failures


def test_a_secret_pasted_into_a_file_variable_is_never_echoed() -> None:
    # The password given where its file's path goes: neither `qris-guard settings` nor the error
    # that the file cannot be read shows it.
    pasted = "S3cr3t-pasted-by-mistake"
    s = Settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password_file=pasted,
        api_token_file=pasted,
        ssl_key_password_file=pasted,
        sasl_oauth_token_file=pasted,
    )
    shown = display(s)
    assert not any(pasted in v for v in shown.values())
    assert "24 characters" in shown["QRIS_SASL_PASSWORD_FILE"]
    with pytest.raises(SecurityConfigError) as err:
        kafka_python_config(s)
    assert pasted not in str(err.value) and "QRIS_SASL_PASSWORD_FILE" in str(err.value)
    with pytest.raises(SecurityConfigError) as err:
        oauth_token(pasted)
    assert pasted not in str(err.value)


def test_settings_shows_the_floors_in_effect() -> None:
    # QRIS_MAX_LEAD_S and QRIS_STALL_ALERT_S have floors from the idle timeout: the value given
    # is shown with the one the worker applies, so an operator does not read 100 s where 180 act.
    shown = display(Settings(idle_timeout_s=60, max_lead_s=100, stall_alert_s=10))
    assert shown["QRIS_MAX_LEAD_S"] == "100 (in effect: 180, the floor given by QRIS_IDLE_TIMEOUT_S)"
    assert shown["QRIS_STALL_ALERT_S"].startswith("10 (in effect: 60,")
    plain = display(Settings(idle_timeout_s=60, max_lead_s=0, stall_alert_s=600))
    assert plain["QRIS_MAX_LEAD_S"] == "0" and plain["QRIS_STALL_ALERT_S"] == "600"
