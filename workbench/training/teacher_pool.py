"""What consecutive runs of one process share, kept warm between them (issue 12, item 4).

A worker (the app's job manager, the CLI, a benchmark) runs many small runs against one teacher:
an ablation suite is 5 to 18 of them. Cold, every run loads the teacher's checkpoint into a
newly built architecture, finds its candidate layers by a dry forward pass, and computes the
teacher's side of the probe's CKA matrix; on the digits suite of ``bench/suite.py`` that was
more than the student's own training steps. Warm, a run finds them here:

- ``lend_teacher``: a pool of loaded teachers. A teacher is *lent* to one run at a time (its
  forward hooks are the run's, see ``workbench.distill.taps.FeatureTaps``), returned when the run
  ends cleanly and unchanged (same layout, still frozen and in eval mode); a run that finds
  every copy lent loads its own.
- ``layers_of``: a frozen model's candidate layers, found once per model object.
- ``Memo``: a bounded, thread-safe LRU for derived tensors (the probe keeps its teacher's
  centred Gram matrices in one, ``workbench.training.probe``).

Each is a cache of a pure function of its key, so a warm run gets what a cold one computes:
its metrics, history and probe are identical (``tests/test_warm.py``). Keys name everything the
value depends on (the store, the teacher run and its checkpoint file's size and mtime, the
device, the data's digest); the bounds are a few entries, so an idle worker holds at most a
few teachers and a few hundred MB. ``clear`` empties everything (tests; a worker that wants
its memory back).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["IDLE_TEACHERS", "Memo", "clear", "lend_teacher", "layers_of", "pool_size"]

IDLE_TEACHERS = 2  # loaded teachers kept between runs (a resnet50 is ~100 MB)

_MEMOS: list[Memo] = []


class Memo:
    """A thread-safe LRU of at most ``entries`` values and ``max_bytes`` bytes (as ``size``
    counts them). ``get_or_make(key, make)`` computes a missing value outside the lock: two
    threads missing the same key at once both compute it (the same value), and one is kept."""

    def __init__(self, entries: int, max_bytes: int, size: Callable[[Any], int] = lambda v: 0):
        self.entries, self.max_bytes, self.size = entries, max_bytes, size
        self._values: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        _MEMOS.append(self)

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key][0]
        value = make()
        nbytes = self.size(value)
        if nbytes > self.max_bytes:
            return value  # would evict everything and still not fit: not kept
        with self._lock:
            self._values[key] = (value, nbytes)
            self._values.move_to_end(key)
            while len(self._values) > self.entries or self._bytes() > self.max_bytes:
                self._values.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._values)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def _bytes(self) -> int:
        return sum(nbytes for _value, nbytes in self._values.values())


# ------------------------------------------------------------------------------ teachers
_IDLE: OrderedDict[Hashable, list[tuple[nn.Module, tuple]]] = OrderedDict()
_IDLE_LOCK = threading.Lock()


@contextlib.contextmanager
def lend_teacher(key: Hashable, load: Callable[[], nn.Module]) -> Iterator[nn.Module]:
    """A loaded teacher for ``key`` for the duration of the block: an idle one from the pool,
    or ``load()``. It goes back to the pool when the block ends without an exception and the
    teacher is as it was lent (a run that moved it to channels-last, unfroze it or left it in
    train mode does not pass that on); the pool keeps the ``IDLE_TEACHERS`` most recently
    returned."""
    with _IDLE_LOCK:
        idle = _IDLE.get(key)
        model, lent = idle.pop() if idle else (None, None)
        if idle is not None and not idle:
            del _IDLE[key]
    if model is None:
        model = load()
        lent = _state(model)
    yield model  # an exception in the block propagates, and the teacher is dropped
    if _state(model) != lent:
        return
    with _IDLE_LOCK:
        _IDLE.setdefault(key, []).append((model, lent))
        _IDLE.move_to_end(key)
        while pool_size() > IDLE_TEACHERS:
            oldest = next(iter(_IDLE))
            _IDLE[oldest].pop(0)
            if not _IDLE[oldest]:
                del _IDLE[oldest]


def pool_size() -> int:
    """Idle teachers in the pool."""
    return sum(len(models) for models in _IDLE.values())


def _state(model: nn.Module) -> tuple:
    """What a run must not change in a lent teacher: each tensor's storage and strides (a
    layout change, a reload), requires_grad, and every module's train/eval flag (a few ms for
    a resnet34: taken when a teacher is loaded and when it comes back)."""
    tensors = tuple(
        (t.data_ptr(), t.stride(), t.requires_grad) for t in (*model.parameters(), *model.buffers())
    )
    return tensors, tuple(m.training for m in model.modules())


# ------------------------------------------------------------------------------ layers
_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, list]] = weakref.WeakKeyDictionary()
_LAYERS_LOCK = threading.Lock()


def layers_of(
    model: nn.Module, input_shape: tuple[int, ...], find: Callable[[nn.Module, tuple], list]
) -> list:
    """``find(model, input_shape)`` (``workbench.models.registry.feature_layers``), once per model object
    and input shape: for a teacher from ``lend_teacher``, whose structure no run changes. The
    dry pass draws no random numbers (eval mode, zeros), so skipping it changes nothing else."""
    with _LAYERS_LOCK:
        found = _LAYERS.get(model, {}).get(tuple(input_shape))
    if found is None:
        found = find(model, input_shape)
        with _LAYERS_LOCK:
            _LAYERS.setdefault(model, {})[tuple(input_shape)] = found
    return list(found)


def clear() -> None:
    """Forget every warm teacher, layer list and memo of this process."""
    with _IDLE_LOCK:
        _IDLE.clear()
    with _LAYERS_LOCK:
        _LAYERS.clear()
    for memo in _MEMOS:
        memo.clear()
