"""What the page's server holds: the limits, the per-tab sessions (their photos and the maps
of their last results) and the one worker thread that runs the model, as a queue.

Nothing here computes: :mod:`._work` calls camlens's API; this module only keeps things
apart (one session per browser tab) and bounded (sessions, photos and results are capped
and the oldest dropped), and lets only one job use the model at a time.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Limits:
    """Bounds on what one page may ask of the server.

    ``upload_bytes``: largest upload; ``pixels``: largest image (width x height, checked
    before the pixels are decoded); ``sessions``: browser tabs kept (the least recently
    used is dropped); ``photos`` and ``results``: kept per tab; ``idle_seconds``: a tab
    not heard from for this long is dropped; ``jobs``: finished jobs kept for polling.
    """

    upload_bytes: int = 20 * 2**20
    pixels: int = 40_000_000
    sessions: int = 16
    photos: int = 8
    results: int = 4
    idle_seconds: float = 3600.0
    jobs: int = 64

    def __post_init__(self) -> None:
        for name in ("upload_bytes", "pixels", "sessions", "photos", "results", "jobs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limit {name} must be a whole number >= 1, got {value!r}")


class NotFound(LookupError):
    """A session, photo, result or job that the server does not hold (any more)."""


@dataclass
class Photo:
    """An uploaded photo, reduced to what the page needs: the model's input, the crop the
    model saw (at most 512 px, the overlays are drawn on it), a thumbnail and the top-k."""

    id: str
    name: str
    size: tuple[int, int]  # (width, height) of the upload
    inputs: torch.Tensor  # (C, H, W) model input, on the CPU
    crop: np.ndarray  # (S, S, 3) uint8: the part of the photo the maps cover
    thumbnail: bytes  # PNG
    predictions: list[dict[str, Any]]
    forward_seconds: float  # one timed forward: the unit of the cost estimates
    probabilities: np.ndarray  # (classes,) softmax of the model's output
    note: str | None = None


@dataclass
class Result:
    """The maps of one explanation, kept so that the pictures can be drawn again with
    another opacity or colormap without running the model."""

    id: str
    photo: Photo
    target: dict[str, Any]
    counterfactual: bool
    layers: list[str]
    maps: dict[str, np.ndarray]  # method -> (H, W) float32 in [0, 1]
    boxes: dict[str, tuple[int, int, int, int] | None]  # in map pixels; None: empty map
    refused: dict[str, str]
    faithfulness: dict[str, dict[str, dict[str, Any]]]
    seconds: float
    pictures: OrderedDict[tuple[Any, ...], bytes] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def picture(self, key: tuple[Any, ...], draw: Callable[[], bytes]) -> bytes:
        """A drawn picture, from a small cache (the last few opacity/colormap choices)."""
        with self.lock:
            if key in self.pictures:
                self.pictures.move_to_end(key)
                return self.pictures[key]
        data = draw()
        with self.lock:
            self.pictures[key] = data
            while len(self.pictures) > 4 * max(1, len(self.maps) + 2):
                self.pictures.popitem(last=False)
        return data


class Session:
    """One browser tab: its photos and results, never seen by another tab."""

    def __init__(self, limits: Limits) -> None:
        self.id = secrets.token_urlsafe(18)
        self.limits = limits
        self.photos: OrderedDict[str, Photo] = OrderedDict()
        self.results: OrderedDict[str, Result] = OrderedDict()
        self.seen = time.monotonic()
        self.lock = threading.Lock()

    def add_photo(self, photo: Photo) -> None:
        with self.lock:
            self.photos[photo.id] = photo
            while len(self.photos) > self.limits.photos:
                old, _ = self.photos.popitem(last=False)
                for rid in [r for r, res in self.results.items() if res.photo.id == old]:
                    del self.results[rid]

    def photo(self, pid: str) -> Photo:
        with self.lock:
            if pid not in self.photos:
                raise NotFound("this photo is no longer held by the server; upload it again")
            return self.photos[pid]

    def add_result(self, result: Result) -> None:
        with self.lock:
            self.results[result.id] = result
            while len(self.results) > self.limits.results:
                self.results.popitem(last=False)

    def result(self, rid: str) -> Result:
        with self.lock:
            if rid not in self.results:
                raise NotFound("this result is no longer held by the server; run it again")
            return self.results[rid]


class Sessions:
    """The open tabs, at most ``limits.sessions``; idle or least recently used ones go."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self) -> Session:
        session = Session(self.limits)
        with self._lock:
            self._expire()
            self._items[session.id] = session
            while len(self._items) > self.limits.sessions:
                self._items.popitem(last=False)
        return session

    def get(self, sid: str | None) -> Session:
        with self._lock:
            self._expire()
            session = self._items.get(sid or "")
            if session is None:
                raise NotFound("this page's session has expired; reload the page")
            session.seen = time.monotonic()
            self._items.move_to_end(session.id)
            return session

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._items.items()
                    if now - v.seen > self.limits.idle_seconds]:
            del self._items[sid]


class Cancelled(Exception):
    """The page asked to stop the job."""


class Job:
    """One piece of model work from one tab: queued, running, then done or failed.

    ``report(stage, done, total)`` is called by the work as it goes (the page polls it) and
    raises :class:`Cancelled` once the page has asked to stop.
    """

    def __init__(self, session: str, kind: str, work: Callable[[Job], Any]) -> None:
        self.id = secrets.token_urlsafe(12)
        self.session = session
        self.kind = kind
        self.work = work
        self.state = "queued"
        self.stage = "waiting for the model"
        self.done = 0
        self.total = 0
        self.result: Any = None
        self.error: str | None = None
        self.cancel = threading.Event()
        self.finished = threading.Event()
        self.ended = 0.0

    def report(self, stage: str | None = None, done: int = 0, total: int = 0) -> None:
        if self.cancel.is_set():
            raise Cancelled
        if stage is not None:
            self.stage = stage
        self.done, self.total = done, total


class Worker:
    """The model's queue: one thread runs the jobs one after another, in order.

    A model is not safe to explain from two threads at once (hooks are registered on it
    during a call), so every use of it goes through here; the page shows its place in line.
    """

    def __init__(self, keep: int = 64) -> None:
        self._queue: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._keep = keep
        self._cv = threading.Condition()
        self._closed = False
        self.running: Job | None = None
        self._thread = threading.Thread(target=self._loop, name="camlens-app-model",
                                        daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        with self._cv:
            if self._closed:
                raise RuntimeError("the app is shutting down")
            self._queue.append(job)
            self._jobs[job.id] = job
            self._trim()
            self._cv.notify()
        return job

    def queued(self) -> list[Job]:
        """The jobs waiting, first in line first."""
        with self._cv:
            return list(self._queue)

    def job(self, jid: str, session: str) -> Job:
        with self._cv:
            job = self._jobs.get(jid)
        if job is None or job.session != session:
            raise NotFound("no such job (it finished long ago, or the page was reloaded)")
        return job

    def position(self, job: Job) -> int:
        """Jobs ahead of ``job`` (the running one included); 0 once it runs."""
        with self._cv:
            if job.state != "queued":
                return 0
            ahead = next((i for i, j in enumerate(self._queue) if j is job), 0)
            return ahead + (self.running is not None)

    def close(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._closed = True
            for job in self._queue:
                job.cancel.set()
            self._cv.notify_all()
        if self.running is not None:
            self.running.cancel.set()
        self._thread.join(timeout)

    def _trim(self) -> None:
        done = [j for j in self._jobs.values() if j.finished.is_set()]
        for job in done[: max(0, len(done) - self._keep)]:
            del self._jobs[job.id]

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                self.running = job
            self._run(job)
            with self._cv:
                self.running = None

    @staticmethod
    def _run(job: Job) -> None:
        try:
            if job.cancel.is_set():
                raise Cancelled
            job.state = "running"
            job.result = job.work(job)
            job.state = "done"
        except Cancelled:
            job.state, job.error = "cancelled", "stopped at your request"
        except (ValueError, TypeError, RuntimeError, NotFound, MemoryError) as err:
            job.state, job.error = "failed", str(err) or type(err).__name__
        except Exception as err:  # the page must hear of it, and the app go on
            job.state, job.error = "failed", f"{type(err).__name__}: {err}"
        finally:
            job.work = _done  # drop the closure (and the tensors it holds)
            job.ended = time.monotonic()
            job.finished.set()


def _done(job: Job) -> None:  # pragma: no cover - never called
    return None
