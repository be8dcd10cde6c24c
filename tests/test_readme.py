"""Every example in README.md runs as written (and the machinery that tests/test_docs.py
uses for the pages under docs/).

The README's examples assume a folder holding ``cat.jpg`` and a folder ``photos/``; here
that is one temporary folder with scikit-image's ``chelsea`` as ``cat.jpg``, ``photos/``
holding ``chelsea.jpg`` and ``coffee.png``, and the ``boxes.json`` that ``camlens evaluate
--annotations`` reads (one box around the cat). The ```python blocks run in order with
``exec`` in one namespace, as the README says (a later block uses ``model`` and
``images`` from the first); after some of them a check asserts what the comments state
(shapes, files). Every command line of the other ```bash blocks runs ``camlens`` as
``python -m camlens`` in a subprocess, must exit with 0 and write the files the README
promises. The first bash block (``make demo``, ``make test``) is the setup that builds the
environment these tests run in: it is not run here. Nothing is downloaded
(``HF_HUB_OFFLINE=1``). Each test is named after its block's or command's first line.
Every relative link of the README leads to a file (and heading) that exists.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    language: str
    line: int  # README line of the block's first line of code
    code: str

    @property
    def first_line(self) -> str:
        return next((s.strip() for s in self.code.splitlines() if s.strip()), "")


def fenced_blocks(text: str, name: str = "README.md") -> list[Block]:
    """The fenced code blocks of a markdown text, in order (unterminated: an error)."""
    blocks: list[Block] = []
    language: str | None = None
    start, lines = 0, []
    for number, line in enumerate(text.splitlines(), 1):
        if language is None:
            match = FENCE.match(line)
            if match:
                language, start, lines = match.group(1).lower(), number + 1, []
        elif line.strip() == "```":
            blocks.append(Block(language, start, "\n".join(lines)))
            language = None
        else:
            lines.append(line)
    if language is not None:
        raise ValueError(f"{name}: the code block opened on line {start - 1} is not closed")
    return blocks


@dataclass(frozen=True)
class Page:
    """A markdown page's code blocks: the Python ones, the shell ones."""

    path: Path
    blocks: tuple[Block, ...]

    @classmethod
    def read(cls, path: Path) -> Page:
        return cls(path, tuple(fenced_blocks(path.read_text(encoding="utf-8"), path.name)))

    @property
    def name(self) -> str:
        return self.path.relative_to(ROOT).as_posix()

    @property
    def python(self) -> list[Block]:
        return [b for b in self.blocks if b.language == "python"]

    @property
    def bash(self) -> list[Block]:
        return [b for b in self.blocks if b.language in ("bash", "sh", "shell", "console")]


PAGE = Page.read(README)
BLOCKS = list(PAGE.blocks)
PYTHON = PAGE.python
BASH = PAGE.bash


def commands(block: Block) -> list[tuple[int, str]]:
    """(README line, command) of each line of a bash block that is not only a comment."""
    found = []
    for offset, line in enumerate(block.code.splitlines()):
        if line.strip() and not line.strip().startswith("#"):
            found.append((block.line + offset, line.strip()))
    return found


def is_setup(block: Block) -> bool:
    return all(cmd.startswith("make ") for _, cmd in commands(block))


CLI = [(line, cmd) for b in BASH if not is_setup(b) for line, cmd in commands(b)]


def _id(text: str) -> str:
    return re.sub(r"\s+", " ", text)[:70]


def test_readme_has_examples_and_one_setup_block():
    assert PYTHON and CLI
    setup = [b for b in BASH if is_setup(b)]
    assert len(setup) == 1 and BLOCKS[0] == setup[0], "the setup block opens the README"
    assert [c.split()[:2] for _, c in commands(setup[0])] == [["make", "demo"], ["make", "test"]]
    assert all(cmd.startswith("camlens ") for _, cmd in CLI), [c for _, c in CLI]
    # ```text blocks show what a command prints (not run): nothing else may hide there
    other = {b.language for b in BLOCKS} - {"python", "bash", "text"}
    assert not other, f"code blocks this test does not run: {other}"
    for block in (b for b in BLOCKS if b.language == "text"):
        assert all(line.startswith("camlens: ") for line in block.code.splitlines()), block


# ------------------------------------------------------------------ the folder


def make_folder(root: Path) -> Path:
    """cat.jpg, photos/ (two photos) and boxes.json, as the README assumes."""
    from PIL import Image
    from skimage import data

    Image.fromarray(data.chelsea()).save(root / "cat.jpg")
    (root / "photos").mkdir()
    Image.fromarray(data.chelsea()).save(root / "photos" / "chelsea.jpg")
    Image.fromarray(data.coffee()).save(root / "photos" / "coffee.png")
    # chelsea is 451 x 300; the cat's head and body, in the photo's pixels
    (root / "boxes.json").write_text(json.dumps({"cat.jpg": [[60, 10, 400, 300]]}))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("readme"))


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------ Python blocks


def _nonzero(name: str, maps: torch.Tensor) -> None:
    """Maps in [0, 1] with something in them (an unmatched target gives all zeros)."""
    assert bool(torch.isfinite(maps).all()), name
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1, name
    assert float(maps.max()) > 0, f"{name}: the map is all zero (its target matched nothing)"


def check_intro(ns: dict[str, Any], folder: Path) -> None:
    assert tuple(ns["images"].shape) == (1, 3, 224, 224)
    for name in ("maps", "tabby", "against"):
        assert tuple(ns[name].shape) == (1, 224, 224), name  # (B, H, W)
        _nonzero(name, ns[name])
    assert tuple(ns["top5"].shape) == (1, 5, 224, 224)  # (B, 5, H, W)
    assert tuple(ns["logits"].shape) == (1, 1000)
    assert ns["labels"][281] == "tabby"


def check_models(ns: dict[str, Any], folder: Path) -> None:
    import camlens

    assert set(ns["maps"]) == {"gradcam", "layercam", "eigencam"}
    for name, maps in ns["maps"].items():
        assert tuple(maps.shape) == (1, 224, 224), name
    assert tuple(ns["boxes"].shape) == (1, 4)  # (B, 4)
    x0, y0, x1, y1 = ns["boxes"][0].tolist()
    assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
    assert tuple(ns["masks"].shape) == (1, 224, 224) and ns["masks"].dtype == torch.bool
    for name in ("r18.pth", "scripted.pt", "pickled.pt", "grid.png"):
        assert (folder / name).is_file(), name
    assert isinstance(ns["scripted"], torch.jit.ScriptModule)
    assert type(ns["pickled"]).__name__ == "ResNet"
    # what the prose says: a crop's map is not stretched over the photo without region=
    with pytest.raises(ValueError, match="region"):
        camlens.viz.overlay("cat.jpg", ns["maps"]["gradcam"][0])
    with pytest.raises(TypeError, match="TorchScript"):
        camlens.explain(ns["scripted"], torch.rand(1, 3, 64, 64))


def check_keras(ns: dict[str, Any], folder: Path) -> None:
    import camlens

    assert tuple(ns["photo"].shape) == (1, 224, 224, 3)  # channels-last
    # the preprocess returned with the Keras model gives its input: the PyTorch model's
    # pixels, moved channels-last, and the Keras call's logits are the PyTorch model's
    assert torch.equal(ns["photo"], ns["images"].permute(0, 2, 3, 1))
    with torch.no_grad():
        want = ns["model"](ns["images"])
    assert float((ns["logits"].detach() - want).abs().max()) < 1e-4
    for name, maps in ns["kmaps"].items():
        assert tuple(maps.shape) == (1, 224, 224), name
        _nonzero(name, maps)
    assert tuple(ns["inner"].shape) == (1, 224, 224)
    assert tuple(ns["heat"].shape) == (2, 224, 224)
    # the same weights in Keras and in PyTorch: the same map (the head's ReLU6 is the last
    # call of the PyTorch model's shared `_swish`)
    torch_map = camlens.explain(ns["model"], ns["images"], layer="_swish")
    assert float((ns["kmaps"]["gradcam"] - torch_map).abs().max()) < 1e-4


def check_tasks(ns: dict[str, Any], folder: Path) -> None:
    shapes = {
        "detected": (1, 112, 112),
        "segmented": (1, 112, 112),
        "similar": (1, 112, 112),
        "words": (1, 3, 112, 112),  # (B, 3, H, W): a map per word
        "frames": (1, 8, 64, 64),  # (B, T, H, W)
        "along": (1, 200),  # (B, L)
        "tokens": (1, 112, 112),
    }
    for name, shape in shapes.items():
        assert tuple(ns[name].shape) == shape, (name, tuple(ns[name].shape))
        _nonzero(name, ns[name])


def check_metrics(ns: dict[str, Any], folder: Path) -> None:
    assert tuple(ns["maps"].shape) == (1, 224, 224)
    assert tuple(ns["predicted"].shape) == (1,)


def check_own_model(ns: dict[str, Any], folder: Path) -> None:
    import camlens

    records = list(camlens.read_index(folder / "own-model-run"))
    assert len(records) == 2 and all(r["targets"][0]["name"] in ("no", "yes") for r in records)
    assert ns["net"].training  # a new Sequential is in train mode, and stays so


def check_audit(ns: dict[str, Any], folder: Path) -> None:
    audited = ns["audited"]
    assert (audited.images, audited.annotated, audited.failed) == (3, 3, 0)
    assert audited.flagged == []  # as the comment says: 3 images are too few
    assert [r.name for r in audited.by_true] == ["tabby", "missile", "espresso"]


AUDIT_FILES = "import json"  # the block writing the audit's photos and boxes

# (page, first line of a Python block): what to check after it ran
CHECKS: dict[tuple[str, str], Callable[[dict[str, Any], Path], None]] = {
    ("README.md", "import camlens"): check_intro,
    ("docs/audit.md",
     "audited = camlens.audit([audit_photos], \"audit/\", model=model, preprocess=preprocess,"):
        check_audit,
    ("docs/models.md", "import torch"): check_models,
    ("docs/keras.md", "import os"): check_keras,
    ("docs/tasks.md", "import torch"): check_tasks,
    ("docs/evaluation.md", "from camlens import metrics"): check_metrics,
    ("docs/datasets.md", "import torch"): check_own_model,
}
AUDIT_PAGE = "docs/audit.md"  # the page whose block AUDIT_FILES writes the audit's files


def check_names(pages: list[Page]) -> None:
    """Each check names one Python block of its page (of those given)."""
    names = {p.name: p for p in pages}
    wanted = [*CHECKS, (AUDIT_PAGE, AUDIT_FILES)]
    for name, first in (k for k in wanted if k[0] in names):
        firsts = [b.first_line for b in names[name].python]
        assert firsts.count(first) == 1, f"{name}: no single Python block starts with {first!r}"


def test_every_check_names_a_python_block():
    check_names([PAGE])


class Session:
    """A page's Python blocks run in order in one namespace, each at most once."""

    def __init__(self, page: Page = PAGE, python: list[Block] | None = None) -> None:
        self.page = page
        self.python = page.python if python is None else python
        self.namespace: dict[str, Any] = {"__name__": "__readme__"}
        self.done: dict[int, BaseException | None] = {}

    def run(self, index: int, folder: Path) -> None:
        for earlier in range(index):
            if earlier not in self.done:  # this test was selected alone
                try:
                    self._run(earlier, folder)
                except Exception:
                    pass
            if self.done[earlier] is not None:
                pytest.fail(f"an earlier block failed: {_id(self.python[earlier].first_line)}")
        self._run(index, folder)

    def _run(self, index: int, folder: Path) -> None:
        block = self.python[index]
        # blank lines in front so tracebacks give the page's line numbers
        code = compile("\n" * (block.line - 1) + block.code, str(self.page.path), "exec")
        cwd = Path.cwd()
        os.chdir(folder)
        try:
            exec(code, self.namespace)
            check = CHECKS.get((self.page.name, block.first_line))
            if check is not None:
                check(self.namespace, folder)
        except BaseException as err:
            self.done[index] = err
            raise
        else:
            self.done[index] = None
        finally:
            os.chdir(cwd)


@pytest.fixture(scope="module")
def session() -> Session:
    return Session()


@pytest.mark.filterwarnings("ignore:loading pickled.pt with weights_only=False")
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit")
@pytest.mark.parametrize(
    "index", range(len(PYTHON)), ids=[f"L{b.line} {_id(b.first_line)}" for b in PYTHON]
)
def test_python_example(index: int, session: Session, folder: Path) -> None:
    session.run(index, folder)


# ------------------------------------------------------------------ command lines


def _option(args: list[str], name: str, default: str) -> str:
    return args[args.index(name) + 1] if name in args else default


def check_explain(args: list[str], folder: Path, inputs: int) -> None:
    """summary.json lists every image, and every file it names exists."""
    out = folder / _option(args, "--out", "camlens-demo" if args[0] == "demo" else "camlens-out")
    import camlens

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    records = list(camlens.read_index(out))  # one line per image, in index.jsonl
    assert summary["images"] == inputs == len(records) and not summary["failed"]
    target = _option(args, "--target", "top1")
    per_image = int(target[3:]) if re.fullmatch(r"top\d+", target) else 1
    empty = []
    for image in records:
        assert len(image["grids"]) == 1 and (out / image["grids"][0]).is_file()
        for method, record in image["maps"].items():
            assert np.load(out / record["npy"]).shape[-2:] == (224, 224), method
            assert len(record["targets"]) == per_image, method
            for t in record["targets"]:
                assert (out / t["overlay"]).is_file(), method
                empty += [f"{image['file']} {method} {t['class']}"] if t["empty"] else []
    if "all" in _option(args, "--method", "").split(","):
        assert {"gradcam", "scorecam", "ablationcam"} <= set(summary["methods"])
    if not re.fullmatch(r"top\d+", target):
        assert all(i["targets"][0]["name"] == target for i in records)
    if "--counterfactual" in args:  # the README's example shows something
        assert not empty, empty


def _inputs(args: list[str], folder: Path) -> int:
    """The number of images the command's paths hold (folders walked recursively)."""
    count = 0
    for arg in args[1:]:
        if arg.startswith("-"):
            break
        path = folder / arg
        count += sum(1 for f in path.rglob("*") if f.is_file()) if path.is_dir() else 1
    return count


def serve_app(args: list[str], folder: Path, env: dict[str, str], where: str) -> None:
    """``camlens app ...`` serves until Ctrl-C: wait until it serves, load the page, then
    interrupt it (with the default SIGINT disposition: a CI background job inherits it
    ignored); it must stop cleanly."""
    import signal
    import time
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "camlens", *args], cwd=folder, env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        text, deadline = "", time.monotonic() + 300
        while " at http" not in text and time.monotonic() < deadline:
            text = proc.stderr.readline()
            assert text or proc.poll() is None, f"{where}: the app exited"
        url = text.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url, timeout=60) as page:
            assert page.status == 200 and b"camlens" in page.read()
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0, f"{where}: {proc.stderr.read()[-2000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("line, command", CLI, ids=[f"L{n} {_id(c)}" for n, c in CLI])
def test_command_line(line: int, command: str, folder: Path) -> None:
    run_command(PAGE, line, command, folder)


def run_command(page: Page, line: int, command: str, folder: Path) -> None:
    """Run one ``camlens ...`` line of a page and check the files it promises."""
    args = shlex.split(command, comments=True)[1:]  # "camlens" is python -m camlens
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if "audit-photos/" in args:  # the files the audit page's Python block writes, as a
        audit = Page.read(ROOT / AUDIT_PAGE)  # reader would have them
        block = next(b for b in audit.python if b.first_line == AUDIT_FILES)
        cwd = Path.cwd()
        os.chdir(folder)
        try:
            exec(block.code, {"__name__": "__readme__"})
        finally:
            os.chdir(cwd)
    if args[0] == "app":
        serve_app(args, folder, env, f"{page.name} line {line}")
        return
    done = subprocess.run([sys.executable, "-m", "camlens", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (
        f"{page.name} line {line}: {command}\nexit code {done.returncode}\n"
        f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-3000:]}"
    )
    if args[0] == "explain":
        check_explain(args, folder, _inputs(args, folder))
    elif args[0] == "demo":
        from camlens.cli import DEMO_PHOTOS

        check_explain(args, folder, len(DEMO_PHOTOS))
    elif args[0] == "evaluate":
        out = folder / _option(args, "--out", "camlens-eval")
        for name in ("evaluation.csv", "evaluation.json", "evaluation.md"):
            assert (out / name).is_file(), name
        results = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))["results"]
        if "--method" in args:
            assert [r["method"] for r in results] == _option(args, "--method", "").split(",")
        if "--annotations" in args:  # the box was read and used
            assert all(r["pointing_game"] is not None for r in results)
    elif args[0] == "audit":
        out = folder / _option(args, "--out", "camlens-audit")
        for name in ("report.md", "report.html", "audit.csv", "audit.json"):
            assert (out / name).is_file(), name
    elif args[0] == "labels":
        out = folder / _option(args, "--out", "camlens-labels")
        summary = json.loads((out / "labels.json").read_text(encoding="utf-8"))
        for method in _option(args, "--method", "gradcam").split(","):
            assert (out / method / "boxes.json").is_file() and list((out / method).glob("*.png"))
        assert summary
    elif args[0] in ("methods", "models"):
        assert done.stdout.strip()
        if args[0] == "methods":
            assert "gradcam" in done.stdout and "--method all" in done.stdout


# ------------------------------------------------------------------ links


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {anchor(h) for h in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


def broken_links(path: Path) -> list[str]:
    """The relative links of a markdown file whose file or heading does not exist."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, fragment = target.partition("#")
        where = (path.parent / file).resolve() if file else path
        if not where.exists() or (fragment and where.suffix == ".md"
                                  and fragment not in anchors(where)):
            broken.append(target)
    return broken


def test_readme_links_resolve():
    links = LINK.findall(README.read_text(encoding="utf-8"))
    assert any(t.startswith("docs/") for t in links)
    assert broken_links(README) == []
