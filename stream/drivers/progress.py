"""Progress of long offline commands (`replay`, `dump`, `simulate`) on a terminal: records,
rate and, when the size of the work is known, the ETA, rewritten in place on stderr at most
twice a second. Quiet when stderr is not a terminal (piped, in CI, in tests).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")


class Progress:
    def __init__(
        self,
        label: str,
        *,
        fraction: Callable[[], float | None] | None = None,
        out: IO[str] | None = None,
        enabled: bool | None = None,
        every_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.fraction = fraction  # share of the work done, 0..1, if known
        self.out = out if out is not None else sys.stderr
        self.enabled = self.out.isatty() if enabled is None else enabled
        self.every_s = every_s
        self.clock = clock
        self.count = 0
        self.started = clock()
        self._next = self.started + every_s
        self._shown = False

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.count / elapsed
        text = f"{self.label}: {self.count:,} records, {rate:,.0f}/s"
        share = self.fraction() if self.fraction is not None else None
        if share is not None and 0 < share < 1:
            text += f", {share:.0%}, ETA {elapsed * (1 - share) / share:,.0f} s"
        return text

    def tick(self, n: int = 1) -> None:
        self.count += n
        if self.enabled and self.clock() >= self._next:
            self._next = self.clock() + self.every_s
            self.out.write("\r" + self.line() + "\x1b[K")
            self.out.flush()
            self._shown = True

    def done(self) -> None:
        if self.enabled and self._shown:
            self.out.write("\r\x1b[K")
            self.out.flush()

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        """`items`, counted as they pass."""
        try:
            for item in items:
                self.tick()
                yield item
        finally:
            self.done()


def file_fraction(fh: IO[bytes], size: int) -> Callable[[], float | None]:
    """The share of a file read so far (its position against its size)."""

    def share() -> float | None:
        try:
            return fh.tell() / size if size > 0 else None
        except (OSError, ValueError):
            return None

    return share
