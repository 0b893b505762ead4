"""Dead-letter records (`qris.dead-letter`): a rejected input record with its original bytes.

Keyed by the original key, so the dead letter lands beside what it was meant to be. A value or
key over 64 KiB is carried as its first 64 KiB, with its length and SHA-256, so the dead letter
of the largest record a broker accepts (1 MiB by default) is still small enough to send
(about 0.6 MiB at most). Imports nothing outside the core.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Final

from .decisions import SCHEMA_VERSION, Decision
from .validation import Rejection

MAX_CARRIED_BYTES: Final = 65_536  # bytes of a value or key carried whole; longer ones: a prefix


def _carried(prefix: str, data: bytes | None) -> dict[str, Any]:
    # `<prefix>_b64` is null for a missing key but "" for a missing value (as before): the
    # schema keeps the shape consumers already read.
    if data is None:
        return {
            f"{prefix}_b64": None if prefix == "key" else "",
            f"{prefix}_truncated": False,
            f"{prefix}_length": None,
            f"{prefix}_sha256": None,
        }
    truncated = len(data) > MAX_CARRIED_BYTES
    return {
        f"{prefix}_b64": base64.b64encode(data[:MAX_CARRIED_BYTES] if truncated else data).decode("ascii"),
        f"{prefix}_truncated": truncated,
        f"{prefix}_length": len(data),
        f"{prefix}_sha256": hashlib.sha256(data).hexdigest(),
    }


def dead_letter_record(
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    value: bytes | None,
    rejection: Rejection,
) -> Decision:
    """The dead letter for a rejected record; `dead_letter_id` is `<topic>:<partition>:<offset>`."""
    key_text: str | None = None
    out_key = key
    if key is not None:
        if len(key) > MAX_CARRIED_BYTES:
            out_key = key[:MAX_CARRIED_BYTES]  # the Kafka key of the dead letter too
        else:
            try:
                key_text = key.decode("utf-8")
            except UnicodeDecodeError:
                key_text = None
    return Decision(
        "dead_letter",
        out_key,
        {
            "dead_letter_id": f"{topic}:{partition}:{offset}",
            "source_topic": topic,
            "source_partition": partition,
            "source_offset": offset,
            "source_timestamp_ms": timestamp_ms,
            "key": key_text,
            **_carried("key", key),
            **_carried("value", value),
            "reason": rejection.reason,
            "error": rejection.error,
            "field": rejection.field,
            "schema_version": SCHEMA_VERSION,
        },
        timestamp_ms,
    )
