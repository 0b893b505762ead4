"""Dead-letter records (`qris.dead-letter`): a rejected input record with its original bytes.

Keyed by the original key, so the dead letter lands beside what it was meant to be. Imports
nothing outside the core.
"""

from __future__ import annotations

import base64

from .decisions import SCHEMA_VERSION, Decision
from .validation import Rejection


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
    if key is not None:
        try:
            key_text = key.decode("utf-8")
        except UnicodeDecodeError:
            key_text = None
    value_b64 = base64.b64encode(value).decode("ascii") if value is not None else ""
    return Decision(
        "dead_letter",
        key,
        {
            "dead_letter_id": f"{topic}:{partition}:{offset}",
            "source_topic": topic,
            "source_partition": partition,
            "source_offset": offset,
            "source_timestamp_ms": timestamp_ms,
            "key": key_text,
            "key_b64": base64.b64encode(key).decode("ascii") if key is not None else None,
            "value_b64": value_b64,
            "reason": rejection.reason,
            "error": rejection.error,
            "field": rejection.field,
            "schema_version": SCHEMA_VERSION,
        },
        timestamp_ms,
    )
