"""The one module that owns JSON: every record in and out goes through orjson here.

Must not import anything but orjson, so every driver serialises the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


# Parse JSON text (bytes must be UTF-8): orjson's own function, no Python frame around it (a
# replay parses each record's line and value, and scans the file once more: 900k calls for 300k).
loads: Callable[[bytes | str], Any] = orjson.loads


def dumps(value: Any) -> bytes:
    """Serialise to compact UTF-8 JSON bytes, keys in insertion order."""
    return orjson.dumps(value)


def dumps_sorted(value: Any) -> bytes:
    """Serialise with sorted keys: for hashing and for byte-stable comparisons."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
