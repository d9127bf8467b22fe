"""Running one call's independent model runs side by side.

Every onnxruntime session runs single-threaded (see `onnx_sessions.create_session`): splitting one
small convolution across threads costs more in synchronisation than it gains, and under
concurrent requests the extra threads only fight over the same cores. A lone request gets its
parallelism here instead, by running its independent runs (the P-Net pyramid levels, halves of
a crop batch, a face and its mirror image, the liveness crop) at the same time; onnxruntime and
OpenCV release the GIL while they work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


class SideBySide:
    """Runs a call's tasks on the calling thread plus up to `workers - 1` shared helpers.

    The caller never waits for a helper that has not started its task: after its own first
    task it takes back every task still queued (a helper busy with another request's work
    would otherwise leave this one waiting) and waits only for tasks already running. So a
    loaded server degrades to running each call's tasks on its own thread, and tasks may
    themselves use `map` without deadlocking.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._helpers = (
            ThreadPoolExecutor(self.workers - 1, thread_name_prefix="vision")
            if self.workers > 1
            else None
        )
        self.spread = True

    def map(self, function: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`[function(item) for item in items]`, in order, with the items run side by side."""
        items = list(items)
        if self._helpers is None or len(items) < 2 or not self.spread:
            return [function(item) for item in items]
        queued: list[Future[R]] = [self._helpers.submit(function, item) for item in items[1:]]
        try:
            results = {0: function(items[0])}
            running = []
            for index, future in enumerate(queued, start=1):
                if future.cancel():  # still queued: take it back
                    results[index] = function(items[index])
                else:
                    running.append((index, future))
            for index, future in running:
                results[index] = future.result()
            return [results[index] for index in range(len(items))]
        finally:
            for future in queued:
                future.cancel()

    def run(self, *calls: Callable[[], R]) -> list[R]:
        """Each call's result, in order, with the calls run side by side."""
        return self.map(_call, calls)

    def split(self, count: int) -> Sequence[slice]:
        """`count` items cut into one contiguous slice per worker (fewer when items are few)."""
        parts = max(1, min(self.workers if self.spread else 1, count))
        bounds = [round(i * count / parts) for i in range(parts + 1)]
        return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]


def _call(call: Callable[[], R]) -> R:
    return call()
