"""The output folder of a dataset run: its options, its index of finished images, its shards.

``run.json`` holds the options that decide what the outputs are (model, methods, layer,
target, ...): a run with other options is refused, never mixed into the folder.
``index.jsonl`` holds one JSON line per finished image (its outputs, or why it failed),
appended as each image completes, after its files are in place. A failure marked
``"retry": true`` (the file was missing or could not be read) is tried again by the next
run, whose record then replaces it: the last record of a key is the one that counts, and
:func:`read_index` yields only that one. Other failures (in the model) stay failed.
JSON Lines because appending a line is the whole write (no footer or schema to
rewrite), a line torn by a crash is detected and cut on the next start, it streams in
constant memory, and it needs no dependency (Parquet would need pyarrow and buffers row
groups). Every output file is written to a temporary name and renamed, so a file is
whole or absent; files without an index line are simply written again on resume, under
the same names.

Maps can go into shard files (``maps/shard-*.bin``) instead of one ``.npy`` per image:
each map is an ``.npy`` blob appended to the shard, and the index line gives its shard,
offset and length (:func:`read_maps`). A resumed run opens new shards, so bytes appended
by a killed run without an index line are never referenced.
"""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import UsageError

INDEX = "index.jsonl"
OPTIONS = "run.json"
SHARD_BYTES = 1 << 30  # a new shard after 1 GiB


class RunFolderError(UsageError):
    """The output folder cannot take this run (other options, another run writing to it)."""


class RunIndex:
    """The index of one output folder, opened for a run with ``options``.

    ``done``: the keys (input paths as given) not to do again: finished, or failed for
    another reason than reading the file; their records' output stems are in ``stems``.
    ``retry``: key -> error of the earlier failures this run tries again (missing or
    unreadable files). ``failed``: the keys whose last record is a failure; ``counts``
    the run's totals.
    ``append(record)`` adds a line and makes it durable.
    """

    def __init__(self, out: Path, options: dict[str, Any], restart: bool = False) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        # appends go through this handle; its lock keeps a second run out of the folder
        self._index = open(self.out / INDEX, "ab")  # noqa: SIM115
        try:
            _lock(self._index, self.out)
            self._clean_partial_files()
            saved = self.out / OPTIONS
            if restart:
                self._forget()
            if saved.exists():
                old = json.loads(saved.read_text(encoding="utf-8"))
                changed = _changes(old.get("options", {}), options)
                if changed:
                    raise RunFolderError(
                        f"{self.out} holds a run with other options ({'; '.join(changed)}); "
                        "its outputs would be mixed with this run's. Use another --out, or "
                        "--restart to delete that run's outputs and start again"
                    )
            else:
                _atomic(saved, json.dumps({"options": options}, indent=2,
                                          ensure_ascii=False).encode("utf-8"))
            self.done: set[str] = set()
            self.stems: set[str] = set()
            self.failed: set[str] = set()
            self.retry: dict[str, str] = {}
            for record in self._read_and_repair():  # the last record of a key counts
                key = record["key"]
                self.retry.pop(key, None)
                self.failed.discard(key)
                self.done.discard(key)
                if record.get("error") and record.get("retry"):
                    self.retry[key] = record["error"]
                    continue
                self.done.add(key)
                if record.get("error"):
                    self.failed.add(key)
                if record.get("stem"):
                    self.stems.add(str(record["stem"]).lower())
        except BaseException:
            self._index.close()
            raise
        self._write = threading.Lock()
        self._shard: _Shard | None = None
        self._dirty = False

    # -- records -------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> None:
        """Add one finished image (after its files are in place). The line reaches the
        operating system at once (a killed process loses nothing); :meth:`sync` makes the
        lines durable against a power cut, once per batch. A retried file that fails
        again for the same reason keeps its earlier line (the index does not grow)."""
        key, error = record["key"], record.get("error")
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._write:
            if not (error and record.get("retry") and self.retry.get(key) == error):
                self._index.write(line.encode("utf-8"))
                self._index.flush()
                self._dirty = True
            self.retry.pop(key, None)
            self.done.add(key)
            if error:
                self.failed.add(key)
            else:
                self.failed.discard(key)

    @property
    def counts(self) -> dict[str, int]:
        """``done``: images finished (in this run or before); ``failed``: images whose last
        try failed (earlier failures that this run has not tried again are not counted)."""
        return {"done": len(self.done) - len(self.failed), "failed": len(self.failed)}

    def sync(self) -> None:
        """fsync the shard, then the index: no durable line names bytes that are not."""
        with self._write:
            if self._dirty:
                if self._shard is not None:
                    self._shard.sync()
                os.fsync(self._index.fileno())
                self._dirty = False

    def shard(self) -> _Shard:
        """The shard file this run appends maps to (opened on first use)."""
        with self._write:
            if self._shard is None:
                self._shard = _Shard(self.out / "maps")
            return self._shard

    def close(self) -> None:
        self.sync()
        self._index.close()
        if self._shard is not None:
            self._shard.close()

    def __enter__(self) -> RunIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- start-up ------------------------------------------------------------------------
    def _read_and_repair(self) -> Iterator[dict[str, Any]]:
        """Yield the index's records; cut a last line torn by a crash."""
        path = self.out / INDEX
        if not path.exists():
            return
        good = 0
        with open(path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                try:
                    record = json.loads(raw)
                except ValueError:
                    break
                good += len(raw)
                yield record
        if good != path.stat().st_size:  # a torn or garbled tail: whatever follows it goes
            with open(path, "r+b") as f:
                f.truncate(good)

    def _clean_partial_files(self) -> None:
        """Remove the temporary files of writes a killed run did not finish."""
        for folder in (self.out, self.out / "maps"):
            if folder.is_dir():
                for p in folder.glob(".*.part"):
                    p.unlink(missing_ok=True)

    def _forget(self) -> None:
        """--restart: delete the files the index names, the index and the options."""
        for record in self._read_and_repair():
            for name in _files_of(record):
                target = (self.out / name).resolve()
                if target.is_relative_to(self.out.resolve()):
                    target.unlink(missing_ok=True)
        self._index.truncate(0)
        for p in (self.out / "maps").glob("shard-*.bin") if (self.out / "maps").is_dir() else []:
            p.unlink()
        for name in (OPTIONS, "summary.json"):
            (self.out / name).unlink(missing_ok=True)


class _Shard:
    """Append-only files of ``.npy`` blobs; a new file per run and after 1 GiB."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._lock = threading.Lock()
        self._file: Any = None
        self._name = ""

    def add(self, array: np.ndarray) -> dict[str, Any]:
        buf = io.BytesIO()
        np.save(buf, array)
        data = buf.getvalue()
        with self._lock:
            if self._file is None or self._file.tell() + len(data) > SHARD_BYTES:
                self._open_next()
            offset = self._file.tell()
            self._file.write(data)
            self._file.flush()  # with the OS before any index line names it
        return {"shard": f"maps/{self._name}", "offset": offset, "length": len(data)}

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        n = 0
        while (self.folder / f"shard-{n:05d}.bin").exists():
            n += 1
        self._name = f"shard-{n:05d}.bin"
        self._file = open(self.folder / self._name, "xb")  # noqa: SIM115

    def sync(self) -> None:
        with self._lock:
            if self._file is not None:
                os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read_index(out: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of a run's output folder, one per image, in the order they finished.

    A record has ``file`` (the input as given), ``stem`` (its outputs' name), and either
    ``error`` (why the image was skipped) or its results: ``predictions``, ``targets``,
    ``maps`` (per method: the ``.npy`` file or shard location, and per target its overlay,
    peak and box), ``grids``. Read one at a time: memory stays flat for any run size. A
    file that could not be read and was tried again by a later run has only its last
    record.
    """
    path = Path(out) / INDEX
    if not path.exists():
        raise FileNotFoundError(f"{out} holds no camlens run index ({INDEX})")
    replaced = _replaced(path)
    with open(path, "rb") as f:
        for n, raw in enumerate(f):
            if not raw.endswith(b"\n"):
                return
            if n in replaced:
                continue
            try:
                yield json.loads(raw)
            except ValueError:
                return


def _replaced(path: Path) -> set[int]:
    """The line numbers of retried failures that a later line of the same key replaces.
    Lines are parsed only after a retried failure, and then only up to their key."""
    waiting: dict[str, int] = {}  # key of a retried failure -> its line
    replaced: set[int] = set()
    with open(path, "rb") as f:
        for n, raw in enumerate(f):
            retry = b'"retry":true' in raw  # RunIndex.append's compact JSON
            if not (waiting or retry):
                continue
            try:
                key = (json.decoder.scanstring(raw.decode("utf-8"), 8)[0]
                       if raw.startswith(b'{"key":"') else json.loads(raw)["key"])
            except (ValueError, KeyError, TypeError):
                break
            if key in waiting:
                replaced.add(waiting.pop(key))
            if retry:
                waiting[key] = n
    return replaced


def read_maps(out: str | os.PathLike[str]) -> Iterator[tuple[str, str, np.ndarray]]:
    """``(file, method, maps)`` for every map of a run, from ``.npy`` files or shards:
    maps are (H, W) for one target, (K, H, W) for several."""
    root = Path(out)
    for record in read_index(out):
        for method, entry in (record.get("maps") or {}).items():
            if "npy" in entry:
                yield record["file"], method, np.load(root / entry["npy"])
            elif "shard" in entry:
                loc = entry["shard"]
                with open(root / loc["shard"], "rb") as f:
                    f.seek(loc["offset"])
                    blob = f.read(loc["length"])
                yield record["file"], method, np.load(io.BytesIO(blob))


def _files_of(record: dict[str, Any]) -> Iterator[str]:
    yield from record.get("grids") or []
    for entry in (record.get("maps") or {}).values():
        if "npy" in entry:
            yield entry["npy"]
        for t in entry.get("targets", []):
            for key in ("overlay", "mask"):
                if t.get(key):
                    yield t[key]


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def _atomic(path: Path, data: bytes) -> None:
    from ..viz import atomic_write

    atomic_write(path, data)


def _lock(f: Any, out: Path) -> None:
    """An exclusive lock on the index for this process's run (released when it ends,
    killed or not): two runs never write one folder."""
    try:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # not on POSIX: no lock
        pass
    except OSError:
        raise RunFolderError(
            f"another camlens run is writing to {out}; wait for it, or use another --out"
        ) from None
