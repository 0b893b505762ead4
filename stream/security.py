"""Kafka client security: the settings' protocol, SASL and TLS options as each client library
wants them (Faust's `broker_credentials`, aiokafka, kafka-python admin/consumer/producer), so
every client of the project connects the same way. It reads the secret and certificate files
the settings name (when a client is built, so secrets need not sit in the environment); it
must not be imported by stream/core.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from aiokafka.abc import AbstractTokenProvider as AsyncTokenProvider
from kafka.net.sasl.oauth import AbstractTokenProvider as SyncTokenProvider

from .settings import Settings, shown_path


class SecurityConfigError(ValueError):
    """A security setting names a file that cannot be used (one line, for the CLI)."""


def read_secret(var: str, value: str, path: str) -> str:
    """The secret given directly or in the file `path` (trailing newline removed)."""
    if value or not path:
        return value
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SecurityConfigError(f"{var}={shown_path(path)}: cannot read it ({exc.strerror or exc})") from None


def ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL: the CA file (else the system's CAs), an optional
    client certificate, certificates always verified, host names unless turned off."""
    if s.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=s.ssl_cafile or None)
    except (OSError, ssl.SSLError) as exc:
        raise SecurityConfigError(f"QRIS_SSL_CAFILE={s.ssl_cafile}: not a readable PEM CA file ({exc})") from None
    ctx.check_hostname = bool(s.ssl_check_hostname)
    ctx.verify_mode = ssl.CERT_REQUIRED  # an unchecked host name still needs a trusted certificate
    if s.ssl_certfile:
        password = read_secret("QRIS_SSL_KEY_PASSWORD_FILE", s.ssl_key_password, s.ssl_key_password_file)
        try:
            ctx.load_cert_chain(s.ssl_certfile, s.ssl_keyfile or None, password or None)
        except (OSError, ssl.SSLError) as exc:
            raise SecurityConfigError(
                f"QRIS_SSL_CERTFILE={shown_path(s.ssl_certfile)}, "
                f"QRIS_SSL_KEYFILE={shown_path(s.ssl_keyfile) if s.ssl_keyfile else '(in the cert file)'}: "
                f"cannot load the client certificate ({exc})"
            ) from None
    return ctx


def oauth_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecurityConfigError(
            f"QRIS_SASL_OAUTH_TOKEN_FILE={shown_path(path)}: cannot read it ({exc.strerror or exc})"
        ) from None
    if not token:
        raise SecurityConfigError(f"QRIS_SASL_OAUTH_TOKEN_FILE={path} is empty")
    return token


class TokenFile(AsyncTokenProvider):  # type: ignore[misc]  # aiokafka ships no types
    """OAUTHBEARER for aiokafka (and Faust): the token file is read at every authentication,
    so whatever renews the token (a sidecar, a cron job) only has to rewrite the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def token(self) -> str:
        return oauth_token(self.path)


class SyncTokenFile(SyncTokenProvider):  # type: ignore[misc]  # kafka-python ships no types
    """OAUTHBEARER for kafka-python: as `TokenFile`."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def token(self) -> str:
        return oauth_token(self.path)


def _sasl(s: Settings, oauth: Any) -> dict[str, Any]:
    if not s.security_protocol.startswith("SASL_"):
        return {}
    out: dict[str, Any] = {"sasl_mechanism": s.sasl_mechanism}
    if s.sasl_mechanism == "OAUTHBEARER":
        out["sasl_oauth_token_provider"] = oauth(s.sasl_oauth_token_file)
    else:
        out["sasl_plain_username"] = s.sasl_username
        out["sasl_plain_password"] = read_secret("QRIS_SASL_PASSWORD_FILE", s.sasl_password, s.sasl_password_file)
    return out


def kafka_python_config(s: Settings) -> dict[str, Any]:
    """Keyword arguments of kafka-python's KafkaAdminClient, KafkaConsumer and KafkaProducer:
    the bootstrap servers and the security options."""
    out: dict[str, Any] = {"bootstrap_servers": s.bootstrap.split(","), "security_protocol": s.security_protocol}
    ctx = ssl_context(s)
    if ctx is not None:
        out["ssl_context"] = ctx
        out["ssl_check_hostname"] = bool(s.ssl_check_hostname)
    return out | _sasl(s, SyncTokenFile)


def aiokafka_config(s: Settings) -> dict[str, Any]:
    """Keyword arguments of aiokafka's clients: the bootstrap servers and the security options."""
    out: dict[str, Any] = {"bootstrap_servers": s.bootstrap, "security_protocol": s.security_protocol}
    ctx = ssl_context(s)
    if ctx is not None:
        out["ssl_context"] = ctx
    return out | _sasl(s, TokenFile)


def faust_credentials(s: Settings) -> Any:
    """Faust's `broker_credentials` (None for PLAINTEXT). Faust hands them to the aiokafka
    consumer, producer and admin client it makes, so they agree with `aiokafka_config`."""
    from faust.auth import OAuthCredentials, SASLCredentials, SSLCredentials

    ctx = ssl_context(s)
    if s.security_protocol == "PLAINTEXT":
        return None
    if s.security_protocol == "SSL":
        return SSLCredentials(ctx)
    if s.sasl_mechanism == "OAUTHBEARER":
        return OAuthCredentials(oauth_cb=TokenFile(s.sasl_oauth_token_file), ssl_context=ctx)
    sasl = _sasl(s, TokenFile)
    return SASLCredentials(
        username=sasl["sasl_plain_username"],
        password=sasl["sasl_plain_password"],
        ssl_context=ctx,
        mechanism=s.sasl_mechanism,
    )


def topic_configs(s: Settings) -> dict[str, str]:
    """Configs of every topic the project creates: `min.insync.replicas` when set."""
    return {"min.insync.replicas": str(s.min_insync_replicas)} if s.min_insync_replicas else {}


class BrokerRefused(RuntimeError):
    """The broker cannot be reached or refuses the settings' credentials (one line, for the CLI)."""


def check_broker(s: Settings, timeout_s: float = 10.0) -> None:
    """Connect to the bootstrap servers as every client will (TLS handshake, SASL
    authentication) and raise `BrokerRefused` with the reason if none accepts. The clients
    themselves retry such failures quietly until a timeout, saying only that they could not
    bootstrap; this says which it was, at once."""
    import asyncio

    errors = asyncio.run(_connect_errors(s, timeout_s))
    if errors is not None:
        raise BrokerRefused("; ".join(errors))


def _host_port(server: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port`; the port defaults to Kafka's 9092, as the clients do).

    >>> _host_port("[::1]:9094"), _host_port("kafka-1"), _host_port(" k:19092")
    (('::1', 9094), ('kafka-1', 9092), ('k', 19092))
    """
    text = server.strip()
    host, sep, port = text.rpartition(":")
    if not sep or host.count(":") and not host.endswith("]"):  # no port, or a bare IPv6 address
        host, port = text, "9092"
    if not port.isdigit():
        raise ValueError(f"QRIS_BOOTSTRAP: {text!r} is not host:port")
    return host.strip("[]"), int(port)


async def _connect_errors(s: Settings, timeout_s: float) -> list[str] | None:
    import asyncio

    from aiokafka.conn import create_conn
    from aiokafka.errors import SaslAuthenticationFailed, UnsupportedSaslMechanismError

    cfg = aiokafka_config(s)
    auth = {k: v for k, v in cfg.items() if k != "bootstrap_servers"}
    errors: list[str] = []
    for server in s.bootstrap.split(","):
        where = f"Kafka at {server.strip()} ({s.security_protocol})"
        try:
            host, port = _host_port(server)
            conn = await asyncio.wait_for(
                create_conn(host, port, request_timeout_ms=round(timeout_s * 1000), **auth), timeout_s
            )
        except SaslAuthenticationFailed as exc:
            errors.append(f"{where} refused user {s.sasl_username!r} ({s.sasl_mechanism}): {exc}")
        except UnsupportedSaslMechanismError as exc:
            errors.append(f"{where} does not offer QRIS_SASL_MECHANISM={s.sasl_mechanism}: {exc}")
        except ssl.SSLCertVerificationError as exc:
            ca = f"QRIS_SSL_CAFILE={s.ssl_cafile}" if s.ssl_cafile else "the system CAs (QRIS_SSL_CAFILE unset)"
            errors.append(f"{where}: its TLS certificate is not trusted by {ca}: {exc.verify_message}")
        except ssl.SSLError as exc:
            errors.append(f"{where}: TLS handshake failed: {exc.reason or exc}")
        except TimeoutError:
            errors.append(f"{where}: no answer within {timeout_s:g} s")
        except (OSError, ValueError) as exc:
            errors.append(
                f"cannot reach {where}: {exc.strerror or exc}" if isinstance(exc, OSError) else f"{where}: {exc}"
            )
        except Exception as exc:  # noqa: BLE001 - aiokafka's own connection errors
            errors.append(f"{where}: {str(exc) or type(exc).__name__}")
        else:
            conn.close()
            return None
    return errors
