"""The runner's helper threads: lower priority, and never a stalled run."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from camlens.runner._threads import Helpers, Interrupted, lower_priority


def test_results_errors_and_order():
    helpers = Helpers(2, "t")
    try:
        futures = [helpers.submit(pow, k, 2) for k in range(20)]
        assert [helpers.wait(f) for f in futures] == [k * k for k in range(20)]
        bad = helpers.submit(int, "x")
        with pytest.raises(ValueError, match="invalid literal"):
            helpers.wait(bad)
    finally:
        helpers.shutdown()


def test_the_waiting_thread_does_the_work_when_helpers_cannot():
    """Helpers that never get the CPU (here: blocked before their first task) must not
    stall whoever waits: it runs the queued tasks itself, in order."""
    release = threading.Event()
    helpers = Helpers(2, "t", priority=release.wait)
    ran_in = []
    try:
        futures = [helpers.submit(lambda k=k: ran_in.append((k, threading.get_ident())) or k)
                   for k in range(5)]
        assert helpers.wait(futures[2]) == 2  # runs tasks 0, 1, 2 here
        assert [k for k, _ in ran_in] == [0, 1, 2]
        assert {t for _, t in ran_in} == {threading.get_ident()}
    finally:
        release.set()
        helpers.shutdown()
    assert sorted(k for k, _ in ran_in) == [0, 1, 2, 3, 4]  # the helpers did the rest


def test_shutdown_cancels_what_has_not_started():
    release = threading.Event()
    helpers = Helpers(1, "t", priority=release.wait)
    futures = [helpers.submit(time.sleep, 0) for _ in range(3)]
    threading.Timer(0.3, release.set).start()  # the helper starts after the queue is dropped
    helpers.shutdown(cancel=True)
    assert all(f.cancelled() for f in futures)


def test_a_ctrl_c_in_a_task_run_by_the_waiter():
    """A KeyboardInterrupt raised while the waiting thread runs a task stops the waiter;
    that task, waited for later, says it was interrupted rather than raising again."""
    release = threading.Event()
    helpers = Helpers(1, "t", priority=release.wait)

    def stopped():
        raise KeyboardInterrupt

    try:
        cut = helpers.submit(stopped)
        with pytest.raises(KeyboardInterrupt):
            helpers.wait(cut)
        with pytest.raises(Interrupted):
            helpers.wait(cut)
    finally:
        release.set()
        helpers.shutdown()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_lower_priority_changes_only_the_calling_thread():
    before = os.getpriority(os.PRIO_PROCESS, 0)
    seen = {}

    def helper():
        lower_priority()
        seen["helper"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    t = threading.Thread(target=helper)
    t.start()
    t.join()
    assert seen["helper"] == min(19, before + 19)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before  # the process (main thread) as it was
