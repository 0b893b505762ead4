"""Work done in steps: a generator function that yields nothing between its steps (where the
live shell gives the event loop back: a takeover's decode of a large snapshot) and returns its
result. Imports nothing outside the standard library."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")


def run_to_end(steps: Generator[None, None, T]) -> T:
    """The result of `steps`, all of them taken at once (replay, warm-up, a caller with no loop
    to give back).

    >>> def counted():
    ...     yield
    ...     yield
    ...     return "done"
    >>> run_to_end(counted())
    'done'
    """
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: T = done.value
            return result
