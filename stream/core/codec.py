"""The one module that owns JSON: every record in and out goes through orjson here.

Must not import anything but orjson, so every driver serialises the same way.
"""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def loads(data: bytes | str) -> Any:
    """Parse JSON text (bytes must be UTF-8)."""
    return orjson.loads(data)


def dumps(value: Any) -> bytes:
    """Serialise to compact UTF-8 JSON bytes, keys in insertion order."""
    return orjson.dumps(value)


def dumps_sorted(value: Any) -> bytes:
    """Serialise with sorted keys: for hashing and for byte-stable comparisons."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
