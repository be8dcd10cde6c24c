"""Grid labels and order, as a user reads them.

A class-agnostic method's panel says so (``eigencam: class-agnostic``) instead of naming a
class it never looked at; panels follow the order the methods were asked in, and groups
(``all``, ``heavy``, ``everything``) list the best-known methods first (the registry's
``METHOD_ORDER``). The page does not offer a method the loaded model cannot run, and says
why beside it.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image
from test_app import _call, browser  # noqa: F401 (browser: a fixture)
from torch import nn

import camlens
import camlens.viz
from camlens._registry import METHOD_ORDER, method_class
from camlens.app import _work, build
from camlens.runner._setup import parse_methods
from camlens.viz._compose import panel_title

AGNOSTIC = {"eigencam", "kpcacam", "fem", "randomcam"}


# ------------------------------------------------------------------ labels
def test_class_agnostic_methods_say_so_in_their_label():
    assert {m for m in camlens.available_methods()
            if not method_class(m).class_specific} == AGNOSTIC
    for m in camlens.available_methods():
        want = f"{m}: class-agnostic" if m in AGNOSTIC else f"{m}: tiger cat 37.9%"
        assert panel_title(m, "tiger cat", 0.3787) == want
    assert panel_title("gradcam", "tiger cat", 0.3787, counterfactual=True) == \
        "gradcam (against): tiger cat 37.9%"
    assert panel_title("gradcam", "tiger cat", None, empty=True) == "gradcam: tiger cat (empty)"
    assert panel_title("eigencam", "tiger cat", 0.5, empty=True) == \
        "eigencam: class-agnostic (empty)"
    assert panel_title("gradcam") == "gradcam"  # no class (a custom target)
    assert panel_title("eigencam") == "eigencam: class-agnostic"
    assert panel_title("my own method", "cat", 0.5) == "my own method: cat 50.0%"


# ------------------------------------------------------------------ order
def test_groups_list_the_best_known_first_and_names_keep_their_order():
    heavy = {m for m in METHOD_ORDER if method_class(m).heavy}
    assert sorted(METHOD_ORDER) == sorted(camlens.available_methods())  # one place each
    assert camlens.available_methods() == list(METHOD_ORDER)
    assert METHOD_ORDER[:6] == ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam",
                                "eigencam")
    assert METHOD_ORDER[-1] == "randomcam"  # the baseline last
    assert parse_methods("all").names == [m for m in METHOD_ORDER if m not in heavy]
    assert parse_methods("heavy").names == ["rise", "sscam", "iscam"]
    assert parse_methods("everything").names == list(METHOD_ORDER)
    assert parse_methods("eigencam,gradcam").names == ["eigencam", "gradcam"]
    mixed = parse_methods("kpcacam,all").names
    assert mixed[:3] == ["kpcacam", "gradcam", "gradcam++"] and len(mixed) == len(set(mixed))


@pytest.fixture(scope="module")
def bundled() -> tuple[Any, Any, list[str]]:
    return camlens.load_model()


@pytest.fixture(scope="module")
def chelsea(tmp_path_factory: pytest.TempPathFactory) -> str:
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return str(path)


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The panel titles of every grid the runner draws, row by row."""
    calls: list[list[str]] = []
    grid, rows = camlens.viz.compose_grid, camlens.viz.compose_rows

    def compose_grid(image, pictures, titles, **kw):
        calls.append(list(titles))
        return grid(image, pictures, titles, **kw)

    def compose_rows(image, table, **kw):
        calls.extend([row_title, *titles] for row_title, _, titles in table)
        return rows(image, table, **kw)

    monkeypatch.setattr(camlens.viz, "compose_grid", compose_grid)
    monkeypatch.setattr(camlens.viz, "compose_rows", compose_rows)
    return calls


def test_a_run_draws_the_methods_in_the_order_asked_with_honest_labels(
        bundled, chelsea, tmp_path, drawn):
    model, preprocess, labels = bundled
    asked = ["eigencam", "gradcam", "kpcacam", "layercam"]
    summary = camlens.run(chelsea, tmp_path / "a", model=model, preprocess=preprocess,
                          labels=labels, method=",".join(asked), save="grid")
    assert summary["methods"] == asked
    (entry,) = [r for r in camlens.read_index(tmp_path / "a") if "maps" in r]
    assert list(entry["maps"]) == asked
    top = entry["targets"][0]
    cls = f"{top['name']} {top['probability']:.1%}"
    assert drawn == [["eigencam: class-agnostic", f"gradcam: {cls}", "kpcacam: class-agnostic",
                      f"layercam: {cls}"]]
    assert top["name"] == "tiger cat"

    # two classes: a row each, the class in the row's title; agnostic panels say so
    drawn.clear()
    camlens.run(chelsea, tmp_path / "b", model=model, preprocess=preprocess, labels=labels,
                method="gradcam,eigencam", target="top2", save="grid")
    (entry,) = [r for r in camlens.read_index(tmp_path / "b") if "maps" in r]
    names = [f"{t['name']} {t['probability']:.1%}" for t in entry["targets"]]
    assert drawn == [[f"top {k + 1}: {n}", f"gradcam: {n}", "eigencam: class-agnostic"]
                     for k, n in enumerate(names)]


# ------------------------------------------------------------------ the page
class SmoothNet(nn.Module):
    """SiLU and GELU only (no ReLU-type activation to guide); GAP + linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.SiLU(),
                                      nn.Conv2d(4, 6, 3, stride=2), nn.GELU())
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class FlatHead(nn.Module):
    """ReLU6, then flatten + linear (no GAP head: CAM cannot run at the auto layer)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=8), nn.ReLU6(),
                                      nn.AdaptiveAvgPool2d(4))
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


PRE = camlens.models.preprocessing("imagenet", crop=64)
LABELS = ["red", "green", "blue"]


def _choices(model: nn.Module) -> dict[str, dict]:
    held = _work.Model.wrap(model, PRE, LABELS, "test")
    return {c["name"]: c for c in _work.method_choices(held)}


def test_the_page_is_told_what_the_model_cannot_run_and_why(bundled):
    smooth = _choices(SmoothNet())
    for m in ("guided-backprop", "guided-gradcam"):
        assert "it runs GELU, SiLU: smooth, with no linear region" in smooth[m]["cannot"]
    assert {m for m, c in smooth.items() if c["cannot"] or c["note"]} == {
        "guided-backprop", "guided-gradcam"}
    assert [c["name"] for c in smooth.values()] == list(METHOD_ORDER)  # the best known first

    flat = _choices(FlatHead())
    assert not any(c["cannot"] for c in flat.values())  # ReLU6: guided methods apply
    assert flat["cam"]["note"].startswith("at the auto layer: cam needs layer")
    assert {m for m, c in flat.items() if c["note"]} == {"cam"}

    model, preprocess, labels = bundled  # EfficientNet-Lite0: everything applies
    held = _work.Model.wrap(model, preprocess, labels, "bundled")
    assert held.cannot == {} and held.notes == {}


def test_the_app_labels_class_agnostic_panels_so():
    result = SimpleNamespace(target={"name": "tabby", "probability": 0.521},
                             counterfactual=False)
    assert _work.title(result, "eigencam") == "eigencam: class-agnostic"
    assert _work.title(result, "gradcam") == "gradcam: tabby 52.1%"


def test_the_page_greys_out_what_cannot_run_and_says_why(browser):  # noqa: F811
    with build(SmoothNet(), preprocess=PRE, labels=LABELS, port=0, curve_steps=4) as app:
        status, body = _call(app, "/api/session", {})
        info = json.loads(body)
        assert status == 200
        assert info["default_methods"] == ["gradcam", "gradcam++", "layercam"]
        context = browser.new_context(base_url=app.url)
        page = context.new_page()
        page.goto(app.url)
        page.wait_for_selector('input[name="method"]', state="attached")
        shown = page.eval_on_selector_all('input[name="method"]', "bs => bs.map(b => b.value)")
        kinds = {m: _work.method_choices(app.model)[i]["kind"]
                 for i, m in enumerate(METHOD_ORDER)}
        # in each of the page's groups (one pass, extra forwards, heavy): the best known first
        assert shown == [m for k in ("pass", "forwards", "heavy") for m in METHOD_ORDER
                         if kinds[m] == k]

        def state(name: str) -> tuple[bool, bool, str]:
            box = page.locator(f'input[name="method"][value="{name}"]')
            why = page.inner_text(f"#why-{name}") if page.is_visible(f"#why-{name}") else ""
            return box.is_disabled(), box.is_checked(), why

        disabled, checked, why = state("guided-gradcam")
        assert disabled and not checked
        assert why.startswith("cannot apply to this model: guided backpropagation needs ReLUs")
        assert "SiLU" in why
        assert state("gradcam") == (False, True, "")
        assert state("eigencam") == (False, False, "")
        page.check("#counterfactual")  # class-agnostic methods have no counterfactual
        disabled, _, why = state("eigencam")
        assert disabled and why.startswith("class-agnostic (the same map for every class)")
        assert state("gradcam") == (False, True, "")
        page.uncheck("#counterfactual")
        assert state("eigencam") == (False, False, "")
        assert state("guided-backprop")[0]  # still off: the model cannot run it
        context.close()
