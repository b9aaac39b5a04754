from __future__ import annotations

import gc
import weakref

from toolchain.core.heap import frozen_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # NOTE: a reference cycle: only the cyclic collector frees it


def test_the_heap_is_set_aside_inside_and_given_back_after() -> None:
    assert gc.get_freeze_count() == 0
    before = _Node()
    gone = weakref.ref(before)
    with frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with frozen_heap():  # NOTE: nested: the outer block's set stays
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen
        inside = _Node()
        made_inside = weakref.ref(inside)
        del before, inside
        gc.collect()
        assert made_inside() is None  # NOTE: objects made inside are collected as always
        assert gone() is not None  # NOTE: set aside: a full pass does not look at it
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None  # NOTE: given back: the caller's garbage is collected after the block


def test_a_heap_the_caller_froze_is_left_as_the_caller_set_it() -> None:
    gc.freeze()
    try:
        count = gc.get_freeze_count()
        with frozen_heap():
            assert gc.get_freeze_count() == count
        assert gc.get_freeze_count() == count
    finally:
        gc.unfreeze()
