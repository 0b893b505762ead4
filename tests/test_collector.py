"""The live worker's cyclic garbage collector (`app.young_collections_freeze_survivors`): what
survives a young collection is frozen, never walked again, and still freed by reference
counting; after a rebalance, the cycles that died frozen are collected
(`app.reclaim_frozen_cycles`)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from stream.worker.app import (
    YOUNG_GENERATION_OBJECTS,
    Reclaimed,
    _freeze_after_young,
    reclaim_frozen_cycles,
    young_collections_freeze_survivors,
)


class Kept:
    """A tracked object a weak reference can watch."""

    def __init__(self) -> None:
        self.me: Kept | None = None


@pytest.fixture
def worker_collector() -> Iterator[None]:
    before = gc.get_threshold()
    gc.collect()
    gc.unfreeze()
    try:
        young_collections_freeze_survivors()
        young_collections_freeze_survivors()  # (set once: one callback)
        yield
    finally:
        while _freeze_after_young in gc.callbacks:
            gc.callbacks.remove(_freeze_after_young)
        gc.unfreeze()
        gc.set_threshold(*before)
        gc.collect()


def allocate_past_a_young_collection() -> list[list[int]]:
    return [[i] for i in range(3 * YOUNG_GENERATION_OBJECTS)]


def test_survivors_of_a_young_collection_are_frozen_and_freed_when_their_last_reference_goes(
    worker_collector: None,
) -> None:
    assert gc.callbacks.count(_freeze_after_young) == 1
    assert gc.get_threshold()[0] == YOUNG_GENERATION_OBJECTS
    state = Kept()
    watch = weakref.ref(state)
    kept = allocate_past_a_young_collection()
    frozen = gc.get_freeze_count()
    assert frozen >= YOUNG_GENERATION_OBJECTS  # (everything alive then: the process's heap)
    del state, kept
    assert watch() is None  # (frozen objects are freed by reference counting as before)
    assert gc.get_freeze_count() < frozen


def test_a_cycle_that_dies_after_it_was_frozen_waits_for_an_unfreeze(worker_collector: None) -> None:
    # The cost of the freeze: such a cycle is never collected by the worker (Faust's and
    # asyncio's cycles die young: 84 objects after 1.2 million records, README).
    cycle = Kept()
    cycle.me = cycle
    watch = weakref.ref(cycle)
    kept = allocate_past_a_young_collection()
    del cycle, kept
    gc.collect()
    assert watch() is not None
    gc.unfreeze()
    gc.collect()
    assert watch() is None


def test_a_cycle_that_dies_young_is_collected(worker_collector: None) -> None:
    cycle = Kept()
    cycle.me = cycle
    watch = weakref.ref(cycle)
    del cycle
    allocate_past_a_young_collection()
    assert watch() is None


def test_a_reclaim_collects_the_cycles_that_died_frozen_and_freezes_what_lives_again(worker_collector: None) -> None:
    cycle = Kept()
    cycle.me = cycle
    watch = weakref.ref(cycle)
    alive = Kept()
    alive.me = alive
    kept = allocate_past_a_young_collection()
    del cycle
    gc.collect()
    assert watch() is not None  # (frozen: the worker's own collections never reach it)
    times = iter([10.0, 10.25])
    reclaimed = reclaim_frozen_cycles(clock=lambda: next(times))
    assert watch() is None
    assert reclaimed is not None and reclaimed.unreachable >= 1 and reclaimed.seconds == 0.25
    # The collector as it was: its callback, its thresholds, automatic collections on, and the
    # living (the cycle kept, the lists) frozen again, nothing left for the generations to walk.
    assert gc.callbacks.count(_freeze_after_young) == 1
    assert gc.get_threshold()[0] == YOUNG_GENERATION_OBJECTS and gc.isenabled()
    assert gc.get_freeze_count() >= len(kept)
    assert not any(o is alive for o in gc.get_objects())
    again = reclaim_frozen_cycles()
    assert isinstance(again, Reclaimed) and again.unreachable == 0


def test_no_reclaim_past_the_most_frozen_objects_it_walks(worker_collector: None) -> None:
    # (A pause near the group's session would cost the worker its partitions: the cycles wait.)
    cycle = Kept()
    cycle.me = cycle
    watch = weakref.ref(cycle)
    kept = allocate_past_a_young_collection()
    del cycle
    frozen = gc.get_freeze_count()
    assert frozen >= len(kept)
    assert reclaim_frozen_cycles(max_frozen=frozen - 1) is None
    assert watch() is not None and gc.get_freeze_count() == frozen
    assert reclaim_frozen_cycles(max_frozen=frozen) is not None
    assert watch() is None


def test_a_reclaim_leaves_automatic_collections_off_when_they_were(worker_collector: None) -> None:
    gc.disable()
    try:
        assert reclaim_frozen_cycles() is not None
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_reclaim_whose_clock_fails_leaves_automatic_collections_on(worker_collector: None) -> None:
    def broken() -> float:
        raise OSError("no clock")

    try:
        with pytest.raises(OSError):
            reclaim_frozen_cycles(clock=broken)
        assert gc.isenabled()
    finally:
        gc.enable()  # (the test process's collector, whatever the assertion found)


def test_no_reclaim_without_the_worker_collector() -> None:
    # (Replay and the tests run with Python's own collector: nothing frozen to reclaim.)
    assert _freeze_after_young not in gc.callbacks
    frozen = gc.get_freeze_count()
    assert reclaim_frozen_cycles() is None
    assert gc.get_freeze_count() == frozen
