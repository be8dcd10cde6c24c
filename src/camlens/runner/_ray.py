"""The dataset runner on Ray Data: ``camlens explain --engine ray`` (``pip install camlens[ray]``).

The same job as the local engine (:mod:`._local`), spread over a pool of Ray actors:

* **Reading.** The images still to do become a Ray dataset of small rows (index, path,
  display name, output stem), made with ``ray.data.from_items`` on the driver. Only paths
  travel; each actor decodes its batch itself (threads, with :func:`decode`), so no pixels
  go through the object store and no separate read task competes for CPUs.
* **The model.** ``map_batches`` with a callable class on an ``ActorPoolStrategy`` pool:
  each actor loads the model once from the run's arguments (``load(args)``: models are
  never pickled), then runs the local engine's own functions on each batch of
  ``--batch-size`` images (:func:`._local._explain_batch`, whose ``_prepare`` and
  ``_render`` write the pictures and maps), so the outputs have the same names and the
  same records as the local engine's and a folder can be resumed by either engine.
* **Records.** Each actor returns one JSON line per image (its index record, or why it
  failed) and one per batch with what the driver must know (the layer, methods that
  refused, the cost plan, the notes ``_render`` had for the user: an actor's messages are
  collected, not printed). The driver streams them with ``iter_rows`` and appends each
  record to the folder's index as it arrives (``RunIndex.append``); failed images go
  through ``run.fail``; it prints the messages. Only the driver writes the index.
* **Shards.** With ``--save shards`` every actor appends to a shard file of its own: it
  takes the first free ``maps/shard-NNNNN.bin`` with an exclusive create and moves on to
  the next number when another actor got there first.

**Pool sizing.** With GPUs in the cluster (and ``--device`` not ``cpu``): one actor per
GPU (``num_gpus=1``). Without: ``ceil(CPUs / 4)`` actors, each running torch on about
four threads. In both cases the actors together ask for at most ``CPUs - 0.5`` CPUs
(fractional ``num_cpus`` per actor), so Ray Data's own tasks can always be scheduled: a
pool holding every CPU starves them and the run hangs (seen on two cores with two
one-CPU actors). Two cores: one actor with 1.5 CPUs and two torch threads.

**Where.** Without ``--address`` (and without ``RAY_ADDRESS``) a local Ray instance is
started for the run and shut down after it; an instance this process already started
(``ray.init()`` in a notebook) is used as it is. ``--address HOST:PORT`` (or ``ray://``)
joins a running cluster; one that cannot be reached is a usage error within seconds. On a
cluster, camlens must be installed on every node, the driver needs the cluster's token
(Ray's token authentication: ``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``), and the images
and the output folder must be on a file system that all nodes see at the same paths
(actors read and write them directly; relative paths are made absolute on the driver).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import UsageError
from .._messages import Sink, to_log
from ._files import Run, decode
from ._index import _Shard
from ._local import _STORAGE_ERRNOS, IndexedRun, Job, _explain_batch, _StorageError
from ._setup import load, parse_target, print_plan
from ._threads import Helpers

if TYPE_CHECKING:
    from ._spec import RunSpec

RESERVED_CPUS = 0.5  # left free for Ray Data's own tasks
THREADS_PER_ACTOR = 4  # torch threads of a CPU actor: fewer, larger actors use less memory
CONNECT_TIMEOUT_S = 10.0  # a cluster address must accept a connection within this
ANSWER_TIMEOUT_S = 5.0  # ... and answer as a Ray cluster (gRPC) within this


def pool_size(cpus: float, gpus: float, use_gpus: bool = True,
              actors: int | None = None) -> dict[str, Any]:
    """The actor pool for a cluster of ``cpus`` CPUs and ``gpus`` GPUs: ``size`` actors,
    each with ``num_cpus``, ``num_gpus`` and ``threads`` (torch's intra-op threads).
    ``actors`` (``--actors``) fixes the size; the CPUs are still shared so that Ray Data
    keeps ``RESERVED_CPUS``."""
    if actors is not None and actors < 1:
        raise UsageError(f"--actors must be at least 1, got {actors}")
    free = max(cpus - RESERVED_CPUS, 0.0)
    if use_gpus and gpus >= 1:
        size = int(gpus) if actors is None else actors
        if size > gpus:
            raise UsageError(f"--actors {size}: the cluster has {gpus:g} GPU(s), one per "
                           "actor; ask for at most that many, or --device cpu")
        per = min(1.0, free / size)
        return {"size": size, "num_cpus": per, "num_gpus": 1, "threads": max(1, int(per))}
    size = max(1, math.ceil(cpus / THREADS_PER_ACTOR)) if actors is None else actors
    per = free / size if free > 0 else 0.0
    return {"size": size, "num_cpus": per, "num_gpus": 0, "threads": max(1, round(per))}


def run_ray(job: Job, run: IndexedRun) -> None:
    """Explain ``job.files`` on Ray (see the module): records go to ``job.index`` as the
    actors finish them, failures to ``run.fail``."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError("the ray engine needs Ray: pip install 'camlens[ray]'") from None
    if not job.files:
        return
    started = _connect(ray, job.args.address, job.message)
    try:
        with _without_noise():
            _run(ray, job, run)
    finally:
        if started:
            ray.shutdown()


def _connect(ray: Any, address: str | None, message: Sink = to_log) -> bool:
    """Join the cluster at ``address`` or start a local instance; True if this call
    started (or joined) Ray and so must shut it down."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        if address:
            message(f"--address {address}: this process is already connected to Ray; "
                "running there")
        return False
    if not address or address == "local":
        # Ray turns token authentication on for a new local instance and warns that it did
        # (a note on its default, not a problem): that warning alone is left out
        auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = auth.level
        auth.setLevel(logging.ERROR)
        try:
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
        except (RuntimeError, ConnectionError, ValueError) as err:
            raise UsageError(f"could not start a local Ray instance: {err}") from None
        finally:
            auth.setLevel(level)
        return True
    if address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ray.exceptions.RayError, RuntimeError, ConnectionError, ValueError,
            TimeoutError) as err:
        why = f"{err}" + (f" ({_cause(err.__cause__)})" if err.__cause__ else "")
        raise UsageError(f"--address {address}: could not join the Ray cluster: {why}") from None
    return True


NOISE = (
    # Ray Data's actors get their constructor's arguments through the object store and may
    # restart; the driver's core worker then logs an error-looking line on every run
    # (ray-project/ray#53727: a restart could fail if those objects were lost)
    re.compile(rb"\[\d{4}-[^\]]*\] core_worker\.cc:\d+: Actor with class name: .* has "
               rb"constructor arguments in the object store and max_restarts > 0"),
)
_LOG_START = b"[0000-00-00 "  # how Ray's C++ log lines begin (0: any digit)


@contextmanager
def _without_noise() -> Iterator[None]:
    """This process's stderr (file descriptor 2, where Ray's C++ code logs) without the
    lines of ``NOISE``; every other line passes, and so does at once what does not end in
    a newline (a progress bar) unless it may be the start of one of Ray's log lines."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr to filter
        yield
        return
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def pump() -> None:
        held = b""
        while chunk := os.read(read, 65536):
            *lines, held = (held + chunk).split(b"\n")
            out = b"".join(_unless_noise(line) for line in lines)
            cut = _log_start(held)
            out, held = out + held[:cut], held[cut:]
            _write(saved, out)
        _write(saved, held)

    thread = threading.Thread(target=pump, name="camlens-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer is gone: the pump drains it and ends
        thread.join(timeout=2)
        if not thread.is_alive():  # else a child process holds the pipe: leave it the fds
            os.close(read)
            os.close(saved)


def _unless_noise(line: bytes) -> bytes:
    """A line and its newline, or what came before a noise line on it (a progress bar)."""
    for pattern in NOISE:
        found = pattern.search(line)
        if found:
            return line[:found.start()]
    return line + b"\n"


def _log_start(text: bytes) -> int:
    """Where in an unfinished line one of Ray's log lines may begin (its length if nowhere)."""
    at = text.find(b"[")
    while at >= 0:
        if all(c == t or (t == 48 and 48 <= c <= 57) for c, t in zip(text[at:], _LOG_START)):
            return at
        at = text.find(b"[", at + 1)
    return len(text)


def _write(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _check_reachable(address: str) -> None:
    """A clear error within seconds for an address where no Ray cluster answers (Ray's own
    connection attempts retry for minutes)."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise UsageError(f"--address {address}: expected HOST:PORT (the head's GCS address, "
                       "as `ray start --head` prints it) or ray://HOST:PORT")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as sock:
            if address.startswith("ray://"):
                return
            # Ray's GCS speaks gRPC: HTTP/2 answers a connection preface with SETTINGS.
            sock.settimeout(ANSWER_TIMEOUT_S)
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00"
                         + b"\x00\x00\x00\x00")
            head = sock.recv(9)
    except OSError as err:
        raise UsageError(f"--address {address}: no Ray cluster answers there ({err}); start "
                       "one with `ray start --head`, or leave out --address to run on "
                       "this machine") from None
    if len(head) < 9 or head[3] != 0x04:
        raise UsageError(f"--address {address}: something answers there, but not a Ray "
                       "cluster (give the head's GCS address, HOST:6379 by default)")


@contextmanager
def _data_context(ray: Any, **values: Any) -> Iterator[None]:
    """Set Ray Data's options for this run only, and quiet its notes on what it does
    (the driver shows its own progress)."""
    ctx = ray.data.DataContext.get_current()
    old = {k: getattr(ctx, k) for k in values}
    loggers = {logging.getLogger(name): level for name, level in _QUIET.items()}
    levels = {log: log.level for log in loggers}
    for k, v in values.items():
        setattr(ctx, k, v)
    for log, level in loggers.items():
        log.setLevel(level)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(ctx, k, v)
        for log, level in levels.items():
            log.setLevel(level)


_QUIET = {
    "ray.data._internal.progress": logging.ERROR,  # "progress bars disabled": we show ours
    "ray.data._internal.execution.streaming_executor": logging.WARNING,  # "finished in"
}


def _run(ray: Any, job: Job, run: IndexedRun) -> None:
    from tqdm import tqdm

    resources = ray.cluster_resources()
    pool = pool_size(resources.get("CPU", 1.0), resources.get("GPU", 0.0),
                     use_gpus=job.args.device != "cpu", actors=job.args.actors)
    # actors may run in another folder (or on another node): they get absolute paths; the
    # records keep the names as given
    rows = [{"i": i, "path": str(Path(path).absolute()), "shown": shown, "stem": job.names[i]}
            for i, (path, shown, _) in enumerate(job.files)]
    spec = {
        "args": job.args, "out": str(Path(job.out).absolute()), "max_pixels": job.max_pixels,
        "methods": job.methods,
        "threads": job.args.threads or pool["threads"],  # --threads
    }
    bar = tqdm(total=len(rows), unit="img", desc="camlens explain (ray)", disable=not job.show,
               leave=False)
    options = {"enable_progress_bars": False, "print_on_execution_start": False,
               "wait_for_min_actors_s": 600}
    with _data_context(ray, **options):
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(
            len(rows), math.ceil(len(rows) / job.args.batch_size), 1000)))
        ds = ds.map_batches(
            _Worker, fn_constructor_kwargs={"spec": spec}, batch_size=job.args.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool["size"]),
            num_cpus=pool["num_cpus"], num_gpus=pool["num_gpus"] or None,
        )
        planned = False
        try:
            for row in ds.iter_rows():
                line = json.loads(row["line"])
                if "record" in line:
                    job.index.append(line["record"])
                    job.finished += 1
                    bar.update(1)
                elif "error" in line:  # (file, reason, retry): unreadable files are retried
                    run.fail(*line["error"])
                    bar.update(1)
                elif "storage" in line:
                    raise _StorageError(*line["storage"])
                else:
                    meta = line["meta"]
                    for text in meta["messages"]:
                        job.message(text)
                    job.layer_names[:] = meta["layer_names"] or job.layer_names
                    known = set(job.methods.failed) | set(job.methods.skipped)
                    job.methods.record({m: ValueError(r) for m, r in meta["refused"].items()
                                        if m not in known}, job.message)
                    if meta["plan"] and not planned:
                        from .._explainer import PlanRow
                        planned = True
                        rows_, batch = meta["plan"]
                        print_plan([PlanRow(*r) for r in rows_], batch, len(job.files),
                                   job.message)
        except (ray.exceptions.RayError, ray.data.exceptions.UserCodeException,
                ray.data.exceptions.SystemException) as err:
            raise UsageError(
                f"the ray engine stopped: {_cause(err)}. Every image finished so far is in "
                f"the index of {job.out}; run the same command again to resume"
            ) from None
        finally:
            bar.close()


def _cause(err: BaseException) -> str:
    """The last line of an error that came back from an actor (Ray puts the actor's
    traceback in the message): ``CliError: unknown model ...``."""
    seen: BaseException | None = err
    while seen is not None:
        lines = [t.strip() for t in re.sub(r"\x1b\[[0-9;]*m", "", str(seen)).splitlines()
                 if t.strip()]
        if lines:
            return re.sub(r"^(\w+\.)+(?=\w+: )", "", lines[-1])
        seen = seen.__cause__ or seen.__context__
    return type(err).__name__


class _Collect(Run):
    """Failures of one batch, returned to the driver instead of printed."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[tuple[str, str, bool]] = []

    def fail(self, name: str, reason: str, retry: bool = False) -> None:
        self.failed.append((name, reason, retry))  # retry: the driver's IndexedRun marks it


class _OwnShard(_Shard):
    """A shard writer per actor: never two actors appending to one file."""

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        n = 0
        while True:
            name = f"shard-{n:05d}.bin"
            try:
                self._file = open(self.folder / name, "xb")  # noqa: SIM115
            except FileExistsError:  # another actor (or an earlier run) has it
                n += 1
                continue
            self._name = name
            return


class _ActorIndex:
    """What the local engine's ``_render`` asks of ``job.index`` inside an actor."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._lock = threading.Lock()
        self._shard: _OwnShard | None = None

    def shard(self) -> _OwnShard:
        with self._lock:
            if self._shard is None:
                self._shard = _OwnShard(self.out / "maps")
            return self._shard


class _Worker:
    """One actor of the pool: the model, loaded once, and the local engine's batch steps."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch


        torch.set_num_threads(spec["threads"])
        args: RunSpec = spec["args"]
        out = Path(spec["out"])
        if not out.is_dir():
            raise UsageError(f"the output folder {out} is not visible on this node: the ray "
                           "engine needs a file system shared by every node")
        model, preprocess, labels, layer, device = load(args)
        target = parse_target(args.target, labels)
        self.job = Job(args, [], [], out, model, preprocess, labels, target, layer, device,
                       spec["max_pixels"], spec["methods"], show=False,
                       index=_ActorIndex(out))
        self.messages: list[str] = []
        self.plan: list[Any] | None = None
        # This process only runs batches: the local engine's notes come back to the
        # driver (printed once there); the methods' refusals go back as data.
        self.job.message = self.messages.append
        self.job.plan_sink = self._plan
        self.job.methods.quiet = True
        self.readers = Helpers(2, "camlens-decode")
        self.writers = Helpers(2, "camlens-write")

    def _plan(self, rows: Sequence[Any], batch: int, images: int) -> None:
        self.plan = [[list(r) for r in rows], batch]

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        job = self.job
        job.files = [(Path(p), str(s), "") for p, s in zip(batch["path"], batch["shown"])]
        job.names = [str(s) for s in batch["stem"]]
        job.planned = self.plan is not None
        self.messages.clear()
        run = _Collect()
        tasks = [self.readers.submit(decode, job.files, range(k, k + 1), job.preprocess,
                                     job.max_pixels, run) for k in range(len(job.files))]
        loaded = [item for task in tasks for item in self.readers.wait(task)]
        lines: list[str] = []
        for k, future in _explain_batch(job, loaded, run, self.writers):
            try:
                lines.append(json.dumps({"record": self.writers.wait(future)},
                                        ensure_ascii=False))
            except OSError as err:
                if err.errno in _STORAGE_ERRNOS:
                    lines.append(json.dumps({"storage": [err.errno, err.strerror]}))
                else:
                    run.fail(job.files[k][1], f"could not write its outputs: {err}")
            except ValueError as err:
                run.fail(job.files[k][1], f"could not write its outputs: {err}")
        lines += [json.dumps({"error": list(f)}, ensure_ascii=False) for f in run.failed]
        meta = {
            "messages": list(self.messages),
            "layer_names": list(job.layer_names),
            "refused": {**job.methods.skipped, **job.methods.failed},
            "plan": self.plan,
        }
        lines.insert(0, json.dumps({"meta": meta}, ensure_ascii=False))
        return {"line": lines}

