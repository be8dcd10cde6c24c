"""The Ray engine (``engine="ray"``): the same outputs as the local engine, a folder resumed
by either engine, the actor pool's sizing and shards, and clear errors for cluster
addresses. Ray starts once for this file; every test runs under a time limit."""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")  # camlens[ray]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")
pytest.importorskip("skimage")
pytest.importorskip("PIL")

import camlens.cli  # noqa: E402,F401  (the CLI package first: it imports the runner)
from camlens.cli._args import CliError, say  # noqa: E402
from camlens.runner import RunSpec, _ray  # noqa: E402
from camlens.runner._explain import run_explain  # noqa: E402
from camlens.runner._index import read_index, read_maps  # noqa: E402

LIMIT_S = 90  # per test; Ray hanging (a starved pool) must fail a test, not stall the suite
METHODS = "gradcam,layercam"
BOOKKEEPING = {"index.jsonl", "run.json", "summary.json", ".camlens.lock"}


@pytest.fixture(autouse=True)
def _time_limit(request: pytest.FixtureRequest) -> Iterator[None]:
    """An alarm fails a test that runs too long; should Ray hold the main thread where no
    Python runs, faulthandler ends the whole process a little later."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"{request.node.name} ran for more than {LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(LIMIT_S)
    faulthandler.dump_traceback_later(LIMIT_S + 30, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module", autouse=True)
def same_threads_as_the_actors() -> Iterator[None]:
    """The local engine's runs use the actors' torch thread count (2 on the test's 2-CPU
    Ray instance): other counts sum floats in another order, and maps then differ by about
    1e-6 (seen with one thread against two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(_ray.pool_size(2, 0)["threads"])
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[str]:
    """One local Ray instance for the file (it takes seconds to start); its GCS address."""
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    finally:
        faulthandler.cancel_dump_traceback_later()
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 crops of skimage's photos, of different sizes (one far smaller than the model's
    input), as JPEG and PNG; and one broken file."""
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("images")
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.cat()]
    rng = np.random.default_rng(0)
    for n in range(40):
        src = photos[n % len(photos)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1)), int(w * rng.uniform(0.5, 1))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        size = (60, 50) if n == 7 else (int(rng.integers(120, 400)), int(rng.integers(120, 400)))
        im = Image.fromarray(np.ascontiguousarray(src[y:y + ch, x:x + cw])).resize(size)
        im.save(folder / (f"img{n:02d}.jpg" if n % 2 else f"img{n:02d}.png"))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    return folder


def _args(paths: list[Path], out: Path, **changes: Any) -> RunSpec:
    """The arguments camlens.run() builds, plus the engine's."""
    args = RunSpec(
        paths=[str(p) for p in paths], out=str(out), model="efficientnet-lite0",
        method=METHODS, layer=None, target="top1", counterfactual=False,
        save="overlay,grid,npy", options=[], weights=None, trust_model=False, preprocess=None,
        batch_size=8, device="auto", alpha=0.5, colormap="jet", threshold=0.2,
        max_pixels=None, progress="never", restart=False, engine="local", address=None,
    )
    return dataclasses.replace(args, **changes)


@pytest.fixture(scope="module")
def reference(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local engine's run of the whole folder."""
    out = tmp_path_factory.mktemp("local")
    assert run_explain(_args([images], out)) == 1  # broken.jpg failed
    return out


def _records(out: Path) -> dict[str, dict[str, Any]]:
    records = list(read_index(out))
    keys = [r["key"] for r in records]
    assert len(keys) == len(set(keys)), "an image is in the index twice"
    return {r["key"]: r for r in records}


def _close(a: Any, b: Any, where: str = "") -> None:
    """Equal records, except that probabilities (rounded to 6 digits) may differ by one in
    the last digit: the actors and the local engine may use other torch thread counts (on
    a many-core machine they do), and float sums then round differently."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif where.endswith(".probability") and isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= 2.01e-6, (where, a, b)
    else:
        assert a == b, (where, a, b)


def _assert_same_outputs(out: Path, reference: Path) -> None:
    """The same records (in any order), files and maps as the reference run."""
    _close(_records(out), _records(reference))
    files = {p.name for p in out.iterdir()} - BOOKKEEPING
    assert files == {p.name for p in reference.iterdir()} - BOOKKEEPING
    maps = sorted(f for f in files if f.endswith(".npy"))
    assert len(maps) == 2 * 40
    for name in maps:
        np.testing.assert_allclose(np.load(out / name), np.load(reference / name), rtol=0,
                                   atol=1e-6, err_msg=name)


def test_pool_leaves_cpu_for_ray_data() -> None:
    """The actors never hold every CPU (on two cores two one-CPU actors starved Ray Data
    and the run hung)."""
    for cpus in (1, 2, 3, 4, 8, 16, 64):
        for gpus in (0, 1, 4):
            pool = _ray.pool_size(cpus, gpus)
            assert pool["size"] * pool["num_cpus"] <= cpus - _ray.RESERVED_CPUS + 1e-9
            assert pool["size"] >= 1 and pool["threads"] >= 1
            assert pool["num_gpus"] == (1 if gpus else 0)
            if gpus:
                assert pool["size"] == gpus
    assert _ray.pool_size(2, 0) == {"size": 1, "num_cpus": 1.5, "num_gpus": 0, "threads": 2}
    assert _ray.pool_size(16, 0)["size"] == 4
    assert _ray.pool_size(16, 2, use_gpus=False)["num_gpus"] == 0
    # --actors: the size is given, the CPUs are still shared by the same rule
    assert _ray.pool_size(2, 0, actors=2) == {"size": 2, "num_cpus": 0.75, "num_gpus": 0,
                                              "threads": 1}
    assert _ray.pool_size(16, 0, actors=3)["num_cpus"] == pytest.approx(15.5 / 3)
    assert _ray.pool_size(16, 4, actors=2)["size"] == 2
    with pytest.raises(CliError, match="--actors 5: the cluster has 4 GPU"):
        _ray.pool_size(16, 4, actors=5)
    with pytest.raises(CliError, match="--actors must be at least 1"):
        _ray.pool_size(16, 0, actors=0)


def test_own_shards_never_share_a_file(tmp_path: Path) -> None:
    """Two actors' shard writers: each takes the next free name with an exclusive create."""
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "shard-00000.bin").write_bytes(b"left by a killed run")
    a, b = _ray._OwnShard(maps), _ray._OwnShard(maps)
    one, two = np.arange(6.0).reshape(2, 3), np.ones((4, 4), np.float32)
    where = [a.add(one), b.add(two), a.add(two)]
    assert [w["shard"] for w in where] == ["maps/shard-00001.bin", "maps/shard-00002.bin",
                                          "maps/shard-00001.bin"]
    a.close()
    b.close()
    assert (maps / "shard-00000.bin").read_bytes() == b"left by a killed run"


def test_ray_matches_local(ray_session: str, images: Path, reference: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ray"
    capsys.readouterr()
    start = time.perf_counter()
    assert run_explain(_args([images], out, engine="ray"), say) == 1  # notes printed
    took = time.perf_counter() - start
    err = capsys.readouterr().err
    _assert_same_outputs(out, reference)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads((reference / "summary.json").read_text())
    assert summary["images"] == 40 and summary["failed"] == 1
    assert (out / "run.json").read_text() == (reference / "run.json").read_text()
    # what the actors had to say reaches the driver's stderr, once
    assert err.count("img07.jpg: 60x50 is far smaller") == 1
    assert err.count("skipped " + str(images / "broken.jpg")) == 1
    print(f"40 images on ray: {took:.1f} s")


def test_ray_resumes_a_killed_local_run(ray_session: str, images: Path, reference: Path,
                                        tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    first = sorted(images.glob("img*"))[:20]
    assert run_explain(_args(first, tmp_path)) == 0
    with open(tmp_path / "index.jsonl", "ab") as f:  # killed while writing a line
        f.write(b'{"key": "' + str(first[0]).encode() + b'", "fil')
    capsys.readouterr()
    assert run_explain(_args([images], tmp_path, engine="ray"), say) == 1
    assert "20 image(s) already done, 21 to go" in capsys.readouterr().err
    _assert_same_outputs(tmp_path, reference)
    # finished: only the unreadable file is tried again (an actor decodes it), and its
    # failure, the same again, keeps its one line
    capsys.readouterr()
    run_explain(_args([images], tmp_path, engine="ray"), say)
    assert ("40 image(s) already done, 1 to go (1 of them failed earlier as missing or "
            "unreadable: tried again)") in capsys.readouterr().err
    assert (tmp_path / "index.jsonl").read_bytes().count(b"\n") == 41
    _close(_records(tmp_path), _records(reference))


def test_ray_shards_from_two_actors(ray_session: str, images: Path, reference: Path,
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ray, "THREADS_PER_ACTOR", 1)  # two actors of 0.75 CPU on 2 cores
    assert _ray.pool_size(2, 0)["size"] == 2
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "shard-00000.bin").write_bytes(b"left by a killed run")
    files = sorted(images.glob("img*"))[:12]
    assert run_explain(_args(files, tmp_path, engine="ray", save="overlay,shards",
                             batch_size=2)) == 0
    ref = {(f, m): a for f, m, a in read_maps(reference)}
    got = list(read_maps(tmp_path))
    assert len(got) == 2 * 12
    for file, method, maps in got:  # batches of 2 on one torch thread each: the sums of
        # the reference's batches of 8 on two threads, in another order (1e-6 apart)
        np.testing.assert_allclose(maps, ref[file, method], rtol=0, atol=1e-5)
    spans: dict[str, list[tuple[int, int]]] = {}
    for record in read_index(tmp_path):
        for entry in record["maps"].values():
            loc = entry["shard"]
            spans.setdefault(loc["shard"], []).append((loc["offset"], loc["length"]))
    assert "maps/shard-00000.bin" not in spans
    for shard, parts in spans.items():  # each shard written by one actor: no overlaps
        parts.sort()
        assert all(o + n <= o2 for (o, n), (o2, _) in zip(parts, parts[1:])), shard
        assert sum(n for _, n in parts) == (tmp_path / shard).stat().st_size
    assert len(spans) == 2, sorted(spans)  # both actors wrote


def test_address_checks(ray_session: str) -> None:
    _ray._check_reachable(ray_session)  # a real cluster's GCS answers as one
    with pytest.raises(CliError, match="expected HOST:PORT"):
        _ray._check_reachable("my-head-node")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:  # a web server, say: not Ray
        conn, _ = server.accept()
        conn.recv(100)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    with pytest.raises(CliError, match="not a Ray cluster"):
        _ray._check_reachable(f"127.0.0.1:{port}")
    thread.join(5)
    server.close()


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def _driver(images: list[Path], out: Path, address: str | None) -> str:
    """A separate driver process (as the CLI is): camlens alone must not import Ray."""
    args = _args(images, out, engine="ray", address=address, batch_size=2)
    return textwrap.dedent(f"""
        import argparse, sys, time
        import camlens, camlens.cli, camlens.runner
        from camlens.cli._args import CliError
        from camlens.runner import RunSpec
        from camlens.runner._explain import run_explain
        assert "ray" not in sys.modules, "import camlens imported ray"
        start = time.perf_counter()
        try:
            code = run_explain({args!r})
        except CliError as err:
            print("CliError:", err)
            code = 2
        print(f"seconds {{time.perf_counter() - start:.1f}}")
        sys.exit(code)
    """)


def test_unreachable_address_fails_fast(images: Path, tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _driver([images / "img00.png"], tmp_path,
                                                         address)],
                          capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - start
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"CliError: --address {address}: no Ray cluster answers there" in done.stdout
    assert took < 20, took


def test_joins_a_running_cluster(ray_session: str, images: Path, reference: Path,
                                 tmp_path: Path) -> None:
    """Another process joins the cluster at --address (this file's instance) and disconnects
    when done."""
    files = sorted(images.glob("img*"))[:4]
    done = subprocess.run([sys.executable, "-c", _driver(files, tmp_path, ray_session)],
                          capture_output=True, text=True, timeout=80)
    assert done.returncode == 0, done.stdout + done.stderr
    ref = _records(reference)
    # the cluster's actors run torch on other thread counts than this process's reference
    # (as in test_ray_matches_local): probabilities may differ by one in the last digit
    _close(_records(tmp_path), {str(f): ref[str(f)] for f in files})


def test_starts_and_stops_its_own_ray(images: Path, reference: Path, tmp_path: Path) -> None:
    """Without an address and without a Ray already running in the process: a local
    instance for the run, shut down after it. Paths relative to the driver's folder work
    (actors run elsewhere) and stay as given in the records."""
    files = [Path(os.path.relpath(images, tmp_path)) / f"img{n:02d}.jpg" for n in (1, 3, 5)]
    code = _driver(files, Path("out"), None).replace(
        "sys.exit(code)", "import ray; assert not ray.is_initialized(); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=80, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    ref = _records(reference)
    got = _records(tmp_path / "out")
    assert set(got) == {str(f) for f in files}
    for f in files:
        assert got[str(f)] == {**ref[str(images / f.name)], "key": str(f), "file": str(f)}
        assert (tmp_path / "out" / f"{f.stem}_gradcam.npy").is_file()


def test_without_ray_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    job = argparse.Namespace(files=[(tmp_path / "a.jpg", "a.jpg", "a")], args=_args([], tmp_path))
    with pytest.raises(CliError, match=r"pip install 'camlens\[ray\]'"):
        _ray.run_ray(job, None)
