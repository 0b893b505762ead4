"""Writing a command's output to stdout without losing its end silently.

`BufferedWriter.write` on a pipe returns a short count, without raising, when the reader goes
away during a large write (`qris-guard replay --out - | head -c 100000`): the rest is dropped
and the command would end with status 0 and a cut output. `WholeWrites` writes every byte or
raises (the next write after a short one raises `BrokenPipeError`), and `stdout_reader_gone`
tells a closed stdout from a broken pipe elsewhere (a replay job's pipe), which is a failure.
"""

from __future__ import annotations

import errno
import select
from types import TracebackType
from typing import IO, Any


class WholeWrites:
    """A binary sink over `fh` whose `write` writes all of `data` or raises."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            n = self._fh.write(view)
            if not n:  # a blocking stdout takes a byte or raises: never loop on nothing taken
                raise BrokenPipeError(errno.EPIPE, "stdout took no more bytes")
            view = view[n:]
        return total

    def flush(self) -> None:
        self._fh.flush()

    def fileno(self) -> int:
        return self._fh.fileno()

    def close(self) -> None:
        self._fh.flush()

    def __enter__(self) -> WholeWrites:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.flush()


def stdout_reader_gone() -> bool:
    """Whether stdout's reader is gone: a pipe whose reading end is closed polls as an error
    (Linux), a socket whose peer closed as a hang-up."""
    try:
        poll = select.poll()
        poll.register(1, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poll.poll(0))
    except (OSError, ValueError):
        return False
