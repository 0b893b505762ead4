"""Shared test fixtures: literal record builders with explicit event times."""

from __future__ import annotations

import _thread
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402  (after the path: the repository's `tests` and `stream`)

from stream import BUILD  # noqa: E402

# For a test that subclasses or patches a core class: compiled by mypyc (`make test-compiled`),
# a native class takes no subclass written in Python and its methods are read-only. The source
# build runs it.
not_compiled = pytest.mark.skipif(
    BUILD == "compiled", reason="subclasses or patches a class the compiled build compiles (runs on the sources)"
)


# A fast test running this long is hung (a rule that loops forever): the main thread is
# interrupted, so the run stops and shows where it hung instead of waiting forever. The slow,
# Kafka and chaos tiers take minutes by design and are left alone.
HANG_LIMIT_S = float(os.environ.get("QRIS_TEST_HANG_LIMIT_S", "600"))
_hung: list[str] = []


@pytest.fixture(autouse=True)
def _hung_test_stops(request: pytest.FixtureRequest) -> Iterator[None]:
    if any(request.node.get_closest_marker(m) is not None for m in ("slow", "kafka", "chaos")):
        yield
        return

    def interrupt() -> None:
        _hung.append(request.node.nodeid)
        _thread.interrupt_main()

    timer = threading.Timer(HANG_LIMIT_S, interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        # Cancelled, the timer's thread still has to wake and end: joined here, it is gone before
        # the next test starts (a test comparing thread counts counts only its own threads).
        timer.cancel()
        timer.join()


def pytest_keyboard_interrupt(excinfo: object) -> None:
    """Says which test ran past the limit, when that is what stopped the run."""
    if _hung:
        sys.stderr.write(f"\n{_hung[0]} ran past {HANG_LIMIT_S:g} s (QRIS_TEST_HANG_LIMIT_S): stopped as hung\n")


def pytest_report_header() -> str:
    """Which build the tests run (`make test-compiled` runs them against the compiled copy)."""
    from stream import buildinfo

    return f"qris-guard {buildinfo.describe()}"


def pytest_sessionfinish(session: object, exitstatus: int) -> None:
    """The Kafka tier's topics made in this session are deleted at its end (`kafka_support`
    keeps their prefixes; `QRIS_TEST_KEEP_TOPICS=1` keeps them for a post-mortem). A broker that
    cannot be reached now only gets a warning: the tests have already said what they found."""
    support = sys.modules.get("tests.kafka_support")
    if support is None or not support.RUN_PREFIXES:
        return
    try:
        n = support.delete_run_topics()
    except Exception as exc:  # noqa: BLE001 - clean-up must not change the session's outcome
        print(f"\nconftest: the session's topics were not deleted: {exc!r}", file=sys.stderr)
        return
    if n:
        print(f"\nconftest: deleted {n} topics this session's tests made", file=sys.stderr)
