"""`SideBySide`: a call's independent model runs side by side, never waiting on a busy helper."""

from __future__ import annotations

import threading
import time

import pytest

from service.vision.parallel import SideBySide


def test_results_come_back_in_order_and_helpers_take_part() -> None:
    side_by_side = SideBySide(2)
    threads: set[str] = set()

    def work(item: int) -> int:
        threads.add(threading.current_thread().name)
        time.sleep(0.05)  # long enough that the helper picks up the second item
        return item * item

    assert side_by_side.map(work, range(4)) == [0, 1, 4, 9]
    assert any(name.startswith("vision") for name in threads)
    assert threading.current_thread().name in threads


def test_one_worker_runs_everything_on_the_calling_thread() -> None:
    names = SideBySide(1).run(*[lambda: threading.current_thread().name] * 3)
    assert names == [threading.current_thread().name] * 3


def test_a_busy_helper_does_not_hold_up_another_call() -> None:
    """The only helper is stuck on one call's task: a second call still finishes, alone."""
    side_by_side = SideBySide(2)
    release = threading.Event()
    blocked = threading.Thread(
        target=side_by_side.run, args=(lambda: release.wait(5), lambda: release.wait(5))
    )
    blocked.start()
    time.sleep(0.05)  # the helper is now waiting inside the first call's second task
    started = time.monotonic()
    assert side_by_side.map(lambda x: x + 1, range(5)) == [1, 2, 3, 4, 5]
    assert time.monotonic() - started < 1.0
    release.set()
    blocked.join()


def test_nested_calls_do_not_deadlock() -> None:
    side_by_side = SideBySide(2)
    inner = side_by_side.map(lambda n: sum(side_by_side.map(lambda x: x * n, range(3))), range(4))
    assert inner == [0, 3, 6, 9]


def test_an_exception_reaches_the_caller() -> None:
    def fail(item: int) -> int:
        if item == 2:
            raise ValueError("bad item")
        return item

    with pytest.raises(ValueError, match="bad item"):
        SideBySide(2).map(fail, range(4))


@pytest.mark.parametrize(("workers", "count"), [(2, 7), (2, 1), (3, 2), (1, 5), (2, 0)])
def test_split_covers_every_item_once(workers: int, count: int) -> None:
    parts = SideBySide(workers).split(count)
    covered = [i for part in parts for i in range(count)[part]]
    assert covered == list(range(count))
    assert len(parts) == max(1, min(workers, count))


def test_without_spread_every_task_runs_on_the_calling_thread() -> None:
    side_by_side = SideBySide(2)
    side_by_side.spread = False
    assert side_by_side.split(10) == [slice(0, 10)]
    names = side_by_side.map(lambda _: threading.current_thread().name, range(4))
    assert names == [threading.current_thread().name] * 4
