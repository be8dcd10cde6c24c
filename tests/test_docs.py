"""Every example on the pages under docs/ runs as written, as the README's do.

The machinery is tests/test_readme.py's: each page's ```python blocks run in order in one
namespace of their own (a page starts from nothing: its first block loads what it uses),
in the same folder as the README's (``cat.jpg``, ``photos/``, ``boxes.json``), with the
same checks after the blocks that tests/test_readme.py names; each ``camlens ...`` line of
a ```bash block runs in a subprocess and must write what it promises. Blocks that run a
script of the repository (``python examples/...``, ``bench/...``: minutes each) are
checked for the script and each option they pass; the few Python fragments that show a
call inside a larger script (weights of your own, a download) are listed in FRAGMENTS
with the script that runs them, and compiled. Every relative link resolves.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from test_readme import (
    ROOT,
    Page,
    Session,
    _id,
    broken_links,
    check_names,
    commands,
    folder,  # noqa: F401  (the README's fixtures: the same folder, offline)
    offline,  # noqa: F401
    run_command,
)

PAGES = [Page.read(path) for path in sorted((ROOT / "docs").glob("*.md"))]

# (page, first line) of the Python blocks shown and not run: each a piece of a script
# that its test runs whole, needing weights or a model defined there
FRAGMENTS = {
    ("docs/tasks.md", "from torchvision.models.detection import fasterrcnn_resnet50_fpn"):
        "examples/detection.py (tests/test_examples_tasks.py)",
    ("docs/tasks.md", "from torchvision.models.segmentation import deeplabv3_resnet50"):
        "examples/segmentation.py (tests/test_examples_tasks.py)",
    ("docs/tasks.md", "from camlens.targets import SimilarityTarget"):
        "examples/embedding.py (tests/test_examples_tasks.py)",
    ("docs/tasks.md", "from torchvision.models.video import r3d_18"):
        "examples/video.py (tests/test_examples_tasks.py)",
    ("docs/captioning_and_signals.md", "from camlens.targets import TokenTarget"):
        "examples/captioning.py (tests/test_examples_sequences.py)",
    ("docs/captioning_and_signals.md",
     'maps = camlens.explain(model, signals, method="gradcam", layer="features.10")  # (B, L)'):
        "examples/signal_1d.py (tests/test_examples_sequences.py)",
    ("docs/transformers.md", "import camlens"):
        "pretrained ViT-B/16 weights (a download); tests/test_transformers.py",
    ("docs/transformers.md", "def vit_reshape(t, h=14, w=14):"):
        "tests/test_transformers.py",
}
SCRIPT = re.compile(r"^(?:\.venv/bin/)?python\s+((?:examples|bench)/\S+\.py)")


def _runnable(page: Page) -> list:
    return [b for b in page.python if (page.name, b.first_line) not in FRAGMENTS]


SESSIONS = [(page, index) for page in PAGES for index in range(len(_runnable(page)))]
CLI = [(page, line, cmd) for page in PAGES for block in page.bash
       for line, cmd in commands(block) if cmd.startswith("camlens ")]
SCRIPTS = [(page, line, cmd) for page in PAGES for block in page.bash
           for line, cmd in commands(block) if SCRIPT.match(cmd)]


@pytest.fixture(scope="module")
def sessions() -> dict[str, Session]:
    return {page.name: Session(page, _runnable(page)) for page in PAGES}


def test_docs_blocks_are_run_or_named():
    """Every block of every page is run, a script checked, a named fragment or output."""
    assert SESSIONS and CLI and SCRIPTS
    for page in PAGES:
        for block in page.bash:
            for line, cmd in commands(block):
                assert cmd.startswith("camlens ") or SCRIPT.match(cmd), f"{page.name}:{line}"
        other = {b.language for b in page.blocks} - {"python", "bash", "text"}
        assert not other, f"{page.name}: code blocks this test does not run: {other}"
    firsts = {(p.name, b.first_line) for p in PAGES for b in p.python}
    assert set(FRAGMENTS) <= firsts, set(FRAGMENTS) - firsts
    check_names(PAGES)


@pytest.mark.parametrize("name, first", list(FRAGMENTS),
                         ids=[_id(f"{p} {f}") for p, f in FRAGMENTS])
def test_docs_fragment_compiles(name: str, first: str) -> None:
    page = next(p for p in PAGES if p.name == name)
    block = next(b for b in page.python if b.first_line == first)
    compile(block.code, f"{name}:{block.line}", "exec")


@pytest.mark.filterwarnings("ignore:loading pickled.pt with weights_only=False")
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit")
@pytest.mark.parametrize(
    "page, index", SESSIONS,
    ids=[f"{p.name} L{_runnable(p)[i].line} {_id(_runnable(p)[i].first_line)}"
         for p, i in SESSIONS])
def test_docs_python_example(page: Page, index: int, sessions: dict[str, Session],
                             folder: Path) -> None:  # noqa: F811 (the imported fixture)
    sessions[page.name].run(index, folder)


@pytest.mark.parametrize("page, line, command", CLI,
                         ids=[f"{p.name} L{n} {_id(c)}" for p, n, c in CLI])
def test_docs_command_line(page: Page, line: int, command: str,
                           folder: Path) -> None:  # noqa: F811 (the imported fixture)
    run_command(page, line, command, folder)


@pytest.mark.parametrize("page, line, command", SCRIPTS,
                         ids=[f"{p.name} L{n} {_id(c)}" for p, n, c in SCRIPTS])
def test_docs_script_and_its_options_exist(page: Page, line: int, command: str) -> None:
    script = ROOT / SCRIPT.match(command).group(1)
    assert script.is_file(), f"{page.name}:{line}: no {script}"
    source = script.read_text(encoding="utf-8")
    for option in re.findall(r"--[\w-]+", " ".join(shlex.split(command, comments=True))):
        assert f'"{option}"' in source, f"{page.name}:{line}: {script.name} has no {option}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_docs_links_resolve(page: Page) -> None:
    assert broken_links(page.path) == []
