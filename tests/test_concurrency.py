"""curate.concurrency: results in order, a bounded number of items taken ahead, errors where they happen."""

import threading
import time

import pytest

from curate.concurrency import at_once, map_in_order


def test_results_come_in_order_and_items_are_taken_only_as_results_are():
    taken, running, most = [], [0], [0]
    lock = threading.Lock()

    def items():
        for i in range(12):
            taken.append(i)
            yield i

    def work(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02 * (i % 3))  # later items may finish first
        with lock:
            running[0] -= 1
        return i * i

    got = []
    for result in map_in_order(work, items(), workers=3):
        got.append(result)
        assert len(taken) <= len(got) + 3 + 1  # at most `workers` + 1 ahead of the caller
    assert got == [i * i for i in range(12)]
    assert most[0] > 1  # the items did run at once


def test_an_error_reaches_the_caller_at_its_item():
    def work(i):
        if i == 4:
            raise ValueError("item 4")
        return i

    got = []
    with pytest.raises(ValueError, match="item 4"):
        for result in map_in_order(work, range(10), workers=2):
            got.append(result)
    assert got == [0, 1, 2, 3]


def test_at_once_returns_each_result_by_name_and_raises_the_first_error_after_all_ran():
    done = []

    def slow():
        time.sleep(0.1)
        done.append("slow")
        return 1

    def bad():
        raise RuntimeError("bad")

    assert at_once({"a": lambda: 1, "b": lambda: 2}, workers=2) == {"a": 1, "b": 2}
    with pytest.raises(RuntimeError, match="bad"):
        at_once({"bad": bad, "slow": slow}, workers=2)
    assert done == ["slow"]  # the other call finished before the error was raised
