"""Background threads for decoding and drawing, below the model's CPU priority.

On a machine with few cores the model's pass keeps most of them busy, and every thread
that decodes a photo or encodes a PNG takes a core from it exactly when it needs both
(its OpenMP threads wait for each other). So the helper threads run at a lower priority
(``nice`` 19, Linux only, per thread): they use what the model leaves idle and give way
when it needs more. In four side-by-side comparisons on 160 photos (each the median of 4
or 5 runs, interleaved with the model's bare pass) that moved the default run from
0.74-0.77x to 0.78-0.82x of the bare pass's speed on this project's 2-core machine.

A low priority must never stall a run on a busy machine, where other programs would
always win over the helpers: whoever waits for a result (:meth:`Helpers.wait`) runs
queued tasks itself, at its own priority, until the result is there.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

NICE = 19  # the helpers' niceness, added to the process's own


def lower_priority() -> None:
    """Lower the calling thread's CPU priority (and that of threads it starts) on Linux,
    where ``setpriority`` applies to one thread. Elsewhere (macOS, Windows) a thread id is
    not a process id, so nothing is changed."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid)
                                                 + NICE))
    except OSError:  # not allowed here (a sandbox): run at the usual priority
        pass


class Interrupted(Exception):
    """The task was cut short by a Ctrl-C (a KeyboardInterrupt that was raised then)."""


class Helpers:
    """``count`` threads at a lower priority running submitted tasks in order.

    ``submit(fn, *args)`` returns a :class:`~concurrent.futures.Future`;
    ``wait(future)`` returns its result, running queued tasks in the calling thread while
    it is not done (a Ctrl-C there stops the caller; the task it cut short raises
    :class:`Interrupted` when waited for later); ``shutdown(cancel=...)`` ends the threads.
    """

    def __init__(self, count: int, name: str, priority: Callable[[], None] = lower_priority,
                 ) -> None:
        self._tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._priority = priority
        self._threads = [threading.Thread(target=self._serve, name=f"{name}_{k}", daemon=True)
                         for k in range(count)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._tasks.put((future, fn, args))
        return future

    def wait(self, future: Future[Any]) -> Any:
        while not future.done():
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break  # every task has started: wait for this one
            if task is None:  # shutting down: leave the marker for a thread
                self._tasks.put(None)
                break
            _run(*task)
        try:
            return future.result()
        except KeyboardInterrupt:  # stored when a Ctrl-C cut this task short
            raise Interrupted("stopped by Ctrl-C before it was done") from None

    def shutdown(self, cancel: bool = False) -> None:
        """Stop the threads once the queue is done; ``cancel``: drop the tasks not started."""
        if cancel:
            while True:
                try:
                    task = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if task is not None:
                    task[0].cancel()
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join()

    def _serve(self) -> None:
        self._priority()
        while True:
            task = self._tasks.get()
            if task is None:
                return
            _run(*task)


def _run(future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args)
    except BaseException as err:  # a Ctrl-C in the waiting thread is stored, then raised
        future.set_exception(err)
        if not isinstance(err, Exception):
            raise
    else:
        future.set_result(result)
