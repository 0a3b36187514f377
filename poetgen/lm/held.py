"""A setting held for blocks that may overlap in time, from several threads.

Sampling changes two things for its duration and puts them back after: the model's mode
(evaluation: no dropout) and PyTorch's process-wide oneDNN switch (off: ATen's LSTM is faster a
step at a time). A block that saved the value on entry and restored it on exit would, when two
threads sample one model, restore the other's value in the middle of its loop:

    thread A:  save train, set eval ......................... restore train
    thread B:              save eval, set eval .............................. restore eval
                                                              ^ B samples with dropout from here,
                                                                and the model ends in eval mode

Measured (a model in training mode, two threads sampling it): the model was left in evaluation
mode in 15 runs of 20, and the second thread's samples differed from its seed's in 7; oneDNN was
left off for the process in 5 of 20. A Hold counts the open blocks instead: the first to open
saves the value and sets the block's, the last to close puts the saved one back.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class Hold:
    """One setting, read by `get` and written by `set`, held at a value while any block is open."""

    def __init__(self, get: Callable[[], Any], set: Callable[[Any], None]):  # noqa: A002
        self._get, self._set = get, set
        self._lock = threading.Lock()
        self._open = 0  # blocks open now, in any thread
        self._before: Any = None  # the value before the first of them opened

    @contextmanager
    def at(self, value: Any) -> Iterator[None]:
        """The setting at `value` for the block. Overlapping blocks must ask for one value (the
        first one's holds until the last closes)."""
        with self._lock:
            if self._open == 0:
                self._before = self._get()
                self._set(value)
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                if self._open == 0:
                    self._set(self._before)


_holds_lock = threading.Lock()
_eval_holds: weakref.WeakKeyDictionary[Any, Hold] = weakref.WeakKeyDictionary()


def eval_mode(module) -> Hold:
    """The Hold of `module`'s training mode (one per module, made on first use, gone with it)."""
    with _holds_lock:
        hold = _eval_holds.get(module)
        if hold is None:
            # The module through a weak reference: the hold must not keep it alive.
            ref = weakref.ref(module)
            hold = _eval_holds[module] = Hold(lambda: ref().training,
                                              lambda mode: ref().train(mode))
        return hold
