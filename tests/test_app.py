"""``camlens app``, used as a person uses it: a real (headless) Chromium from Debian's
packages, driven by Playwright, against the page served on a free local port.

The browser is never downloaded: Playwright only ever starts ``CAMLENS_CHROMIUM``, or else
``/usr/bin/chromium`` or a ``chromium`` on the PATH. Without one the four browser tests skip
with one line saying how to run them; with ``CAMLENS_REQUIRE_BROWSER=1`` (``.ci/run``) a
missing browser fails them instead. One server (the bundled model, loaded once) serves every
test of the module.
"""

from __future__ import annotations

import gc
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
import torch

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

import camlens  # noqa: E402
from camlens.app import App, Limits, build  # noqa: E402

REQUIRE_BROWSER = "CAMLENS_REQUIRE_BROWSER"
# Without the background-networking switches Chromium tries to reach Google's services,
# which a closed network refuses (or lets hang).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
TIMEOUT_MS = 120_000
PASSWD_LINE = "root:x:0:0"


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def bundled() -> tuple[Any, Any, list[str]]:
    return camlens.load_model()


@pytest.fixture(scope="module")
def app(bundled: tuple[Any, Any, list[str]]) -> Any:
    model, preprocess, labels = bundled
    limits = Limits(upload_bytes=2 * 2**20, pixels=4_000_000)
    server = build(model, preprocess=preprocess, labels=labels, port=0, limits=limits,
                   curve_steps=10).start()
    yield server
    server.close()


def find_chromium() -> str | None:
    """The Chromium to drive: ``CAMLENS_CHROMIUM`` if set, else Debian's or one on the PATH."""
    chosen = os.environ.get("CAMLENS_CHROMIUM")
    candidates = [chosen] if chosen else ["/usr/bin/chromium", shutil.which("chromium"),
                                          shutil.which("chromium-browser")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def no_browser(why: str) -> NoReturn:
    """Skip the browser tests with how to enable them, or fail under CAMLENS_REQUIRE_BROWSER=1."""
    if os.environ.get(REQUIRE_BROWSER) == "1":
        pytest.fail(f"{why}, and {REQUIRE_BROWSER}=1 requires the browser tests",
                    pytrace=False)
    pytest.skip(f"{why}: to run the browser tests, apt-get install chromium (or set "
                "CAMLENS_CHROMIUM to a Chromium binary)")


@pytest.fixture(scope="module")
def browser() -> Any:
    chromium = find_chromium()
    if chromium is None:
        looked = os.environ.get("CAMLENS_CHROMIUM") or "/usr/bin/chromium or on the PATH"
        no_browser(f"no Chromium at {looked}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        no_browser("Playwright is not installed (pip install 'camlens[test]')")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, headless=True,
                                     args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from PIL import Image
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    out = {}
    for name in ("chelsea", "coffee"):
        out[name] = folder / f"{name}.jpg"
        Image.fromarray(getattr(data, name)()).save(out[name], quality=92)
    whole = out["chelsea"].read_bytes()
    out["truncated"] = folder / "truncated.jpg"
    out["truncated"].write_bytes(whole[: len(whole) // 3])
    out["text"] = folder / "notes.jpg"
    out["text"].write_text("this is not a photo\n")
    out["huge"] = folder / "huge.png"  # 2500 x 2000 = 5 MP, over the test app's 4 MP
    Image.new("RGB", (2500, 2000), (90, 120, 150)).save(out["huge"])
    return out


def _page(browser: Any, app: App) -> Any:
    """A fresh tab (its own browser context) on the app, every request it makes recorded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=app.url)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.requests = []  # type: ignore[attr-defined]
    page.errors = []  # type: ignore[attr-defined]
    page.on("request", lambda r: page.requests.append(r.url))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(app.url)
    page.wait_for_selector('input[name="method"]', state="attached")
    return page


def _choose_methods(page: Any, names: list[str]) -> None:
    for box in page.query_selector_all('input[name="method"]'):
        if box.is_checked() != (box.get_attribute("value") in names):
            box.click()


def _wait_result(page: Any, previous: str | None = None) -> str:
    """Wait until the page shows a new result and nothing is running; its id."""
    page.wait_for_function(
        "(prev) => { const r = document.getElementById('results');"
        " return !r.hidden && r.dataset.result && r.dataset.result !== prev"
        " && document.body.dataset.busy === '0'; }",
        arg=previous)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img')].filter((i) => !i.hidden)"
        ".every((i) => i.complete && i.naturalWidth > 0)")
    return str(page.get_attribute("#results", "data-result"))


def _pixels(element: Any) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(element.screenshot())).convert("RGB"))


def _fetch(page: Any, url: str) -> bytes:
    response = page.request.get(url)
    assert response.ok, (url, response.status)
    return response.body()


def _call(app: App, path: str, body: Any = None, *, session: str | None = "new",
          headers: dict[str, str] | None = None, method: str | None = None
          ) -> tuple[int, bytes]:
    """One request as the page makes it (JSON body, the session header)."""
    h = {"Content-Type": "application/json"}
    if session is not None:
        h["X-Camlens-Session"] = session
    h.update(headers or {})
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(app.url.rstrip("/") + path, data=data, headers=h,
                                     method=method or ("GET" if data is None else "POST"))
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _job(app: App, session: str, started: bytes) -> dict[str, Any]:
    jid = json.loads(started)["job"]
    while True:
        status, body = _call(app, f"/api/jobs/{jid}", session=session)
        assert status == 200, body
        state = json.loads(body)
        if state["state"] not in ("queued", "running"):
            return state
        time.sleep(0.05)


def _session_with_photo(app: App, sample: str = "chelsea") -> tuple[str, dict[str, Any]]:
    status, body = _call(app, "/api/session", {})
    assert status == 200
    sid = json.loads(body)["session"]
    status, body = _call(app, f"/api/samples/{sample}", {}, session=sid)
    assert status == 202, body
    job = _job(app, sid, body)
    assert job["state"] == "done", job
    return sid, job["result"]


def _hooks(model: torch.nn.Module) -> int:
    from torch.nn.modules import module as torch_module

    count = sum(len(getattr(m, a)) for m in model.modules() for a in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))
    return count + sum(len(getattr(torch_module, a)) for a in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
        "_global_backward_pre_hooks"))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ------------------------------------------------------------------ the page
def photo_two_methods_class_click_and_look(browser: Any, app: App, photos: dict[str, Path],
                                           tmp_path: Path) -> None:
    """Upload a photo, pick two methods: overlays, grid, boxes and faithfulness curves show;
    another class gives another map; opacity and colormap redraw without recomputing."""
    page = _page(browser, app)
    _choose_methods(page, ["gradcam", "layercam"])
    assert page.is_checked("#faithfulness")
    page.set_input_files("#upload", str(photos["chelsea"]))
    first = _wait_result(page)

    cards = page.eval_on_selector_all("#cards figure", "fs => fs.map(f => f.dataset.method)")
    assert cards == ["gradcam", "layercam"]
    assert "cat" in page.inner_text("#result-title")  # chelsea's top class is a cat
    for selector in ("#grid", 'img[data-overlay="gradcam"]', 'img[data-overlay="layercam"]'):
        pixels = _pixels(page.locator(selector))
        assert pixels.shape[0] > 100 and pixels.std() > 20, selector  # a picture, not blank
    assert "box [" in page.inner_text('#cards figure[data-method="gradcam"]')
    # the faithfulness panel: a deletion and an insertion curve per method, areas in [0, 1]
    for kind in ("deletion", "insertion"):
        lines = page.eval_on_selector_all(f'.chart[data-kind="{kind}"] polyline',
                                          "ls => ls.map(l => l.dataset.method)")
        assert lines == ["gradcam", "layercam"]
    areas = [float(t) for t in page.eval_on_selector_all(
        "#auc td.num", "tds => tds.map(t => t.textContent)")]
    assert len(areas) == 4 and all(0 <= a <= 1 for a in areas)

    npy = page.get_attribute('#cards figure[data-method="gradcam"] a[href$=".npy"]', "href")
    before = np.load(io.BytesIO(_fetch(page, npy)))
    assert before.shape == (224, 224) and before.max() == pytest.approx(1.0)
    shown_before = _pixels(page.locator('img[data-overlay="gradcam"]'))

    # another class: click the third prediction
    other = page.locator("#predictions button").nth(2)
    other_name = other.locator(".name").inner_text()
    other.click()
    second = _wait_result(page, first)
    assert other_name in page.inner_text("#result-title")
    npy = page.get_attribute('#cards figure[data-method="gradcam"] a[href$=".npy"]', "href")
    after = np.load(io.BytesIO(_fetch(page, npy)))
    assert np.abs(after - before).max() > 0.1  # another class, another map
    shown_after = _pixels(page.locator('img[data-overlay="gradcam"]'))
    assert np.abs(shown_after.astype(int) - shown_before.astype(int)).mean() > 1

    # the look: another colormap and opacity, the same result (no new run)
    page.select_option("#colormap", "viridis")
    page.fill("#alpha", "0.8")
    page.dispatch_event("#alpha", "change")
    page.wait_for_function(
        "() => { const i = document.querySelector('img[data-overlay=\"gradcam\"]');"
        " return i.src.includes('viridis') && i.src.includes('alpha=0.80') && i.complete"
        " && i.naturalWidth > 0; }")
    assert page.get_attribute("#results", "data-result") == second
    recoloured = _pixels(page.locator('img[data-overlay="gradcam"]'))
    assert np.abs(recoloured.astype(int) - shown_after.astype(int)).mean() > 5

    # downloads: the zip holds the maps, the overlays, the grid and result.json
    import zipfile

    bundle = zipfile.ZipFile(io.BytesIO(_fetch(page, page.get_attribute("#download-zip",
                                                                        "href"))))
    names = bundle.namelist()
    assert {"chelsea/maps/gradcam.npy", "chelsea/maps/layercam.npy", "chelsea/grid.png",
            "chelsea/overlays/layercam.png", "chelsea/result.json"} <= set(names)
    record = json.loads(bundle.read("chelsea/result.json"))
    assert record["target"]["name"] == other_name

    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    assert _pixels(page.locator("body")).std() > 20 and shot.stat().st_size > 50_000
    # nothing but this server was asked for anything (no fonts, CDNs or analytics)
    assert page.requests and all(u.startswith(app.url) for u in page.requests), page.requests
    assert page.errors == []
    page.context.close()


def bad_uploads_show_a_message_and_the_app_keeps_serving(
        browser: Any, app: App, photos: dict[str, Path], tmp_path: Path) -> None:
    page = _page(browser, app)
    _choose_methods(page, ["gradcam"])
    page.uncheck("#faithfulness")
    cases = [("truncated", "truncated or corrupt"), ("text", "not an image"),
             ("huge", "over this page's limit of 4,000,000")]
    for name, expected in cases:
        page.set_input_files("#upload", str(photos[name]))
        page.wait_for_selector("#message:not([hidden])")
        message = page.inner_text("#message")
        assert photos[name].name in message and expected in message, message
        page.wait_for_function("() => document.body.dataset.busy === '0'")
    # too large to send: the page says so without uploading
    big = photos["huge"].parent / "big.jpg"
    big.write_bytes(os.urandom(3 * 2**20))
    page.set_input_files("#upload", str(big))
    page.wait_for_function("() => document.getElementById('message').textContent"
                           ".includes('big.jpg: 3.0 MB is over')")
    # and a good photo still works
    page.set_input_files("#upload", str(photos["chelsea"]))
    _wait_result(page)
    assert page.is_hidden("#message")
    assert page.eval_on_selector_all("#photos button", "bs => bs.length") == 1
    assert page.errors == []
    page.context.close()


def two_tabs_get_their_own_results(browser: Any, app: App, photos: dict[str, Path],
                                   tmp_path: Path) -> None:
    one, two = _page(browser, app), _page(browser, app)
    for page in (one, two):
        _choose_methods(page, ["gradcam", "gradcam++"])
        page.uncheck("#faithfulness")
    one.set_input_files("#upload", str(photos["chelsea"]))  # both in the queue at once
    two.set_input_files("#upload", str(photos["coffee"]))
    first, second = _wait_result(one), _wait_result(two)
    assert "cat" in one.inner_text("#result-title")
    assert "espresso" in two.inner_text("#result-title")
    assert one.eval_on_selector_all("#photos img", "i => i.length") == 1
    assert two.eval_on_selector_all("#photos img", "i => i.length") == 1
    # a tab cannot read another tab's results, even knowing their id
    theirs = one.get_attribute("#grid", "src").split("?")[0]
    sid_two = two.get_attribute("#grid", "src").split("/")[3]
    stolen = app.url.rstrip("/") + theirs.replace(theirs.split("/")[3], sid_two)
    assert second != first and two.request.get(stolen).status == 404
    for page in (one, two):
        page.context.close()


def a_typed_path_is_never_read(browser: Any, app: App, photos: dict[str, Path],
                               tmp_path: Path) -> None:
    """Paths typed into the page's boxes or sent in requests are names, never files."""
    assert PASSWD_LINE in Path("/etc/passwd").read_text()
    page = _page(browser, app)
    _choose_methods(page, ["gradcam"])
    page.uncheck("#faithfulness")
    page.set_input_files("#upload", str(photos["chelsea"]))
    _wait_result(page)
    page.fill("#class-input", "/etc/passwd")
    page.press("#class-input", "Enter")
    page.wait_for_selector("#message:not([hidden])")
    assert "unknown class '/etc/passwd'" in page.inner_text("#message")
    page.fill("#layer", "/etc/passwd")
    page.click("#run")
    page.wait_for_function("() => document.getElementById('message').textContent"
                           ".includes('unknown layer')")
    assert PASSWD_LINE not in page.content()
    page.context.close()

    sid, photo = _session_with_photo(app)
    answers = [
        _call(app, "/etc/passwd"),
        _call(app, "/..%2F..%2F..%2Fetc%2Fpasswd"),
        _call(app, "/app.js/../../../etc/passwd"),
        _call(app, f"/api/photos/{sid}/..%2F..%2F..%2Fetc%2Fpasswd.png"),
        _call(app, "/api/samples/..%2F..%2F..%2Fetc%2Fpasswd", {}, session=sid),
        _call(app, "/api/samples/%2Fetc%2Fpasswd", {}, session=sid),
        _call(app, "/api/photos", b"", session=sid, headers={"X-Camlens-Name": "/etc/passwd"}),
        _call(app, "/api/photos", b"/etc/passwd", session=sid,
              headers={"X-Camlens-Name": "/etc/passwd"}),
        _call(app, "/api/estimate", {"photo": "/etc/passwd", "methods": ["gradcam"]},
              session=sid),
        _call(app, "/api/explain", {"photo": photo["id"], "methods": ["/etc/passwd"]},
              session=sid),
    ]
    for status, body in answers:
        assert 400 <= status < 500 and PASSWD_LINE.encode() not in body, (status, body)
    assert b"the file is empty" in answers[6][1] and b"not an image" in answers[7][1]


@pytest.mark.parametrize("scenario", [
    photo_two_methods_class_click_and_look, bad_uploads_show_a_message_and_the_app_keeps_serving,
    two_tabs_get_their_own_results, a_typed_path_is_never_read], ids=lambda f: f.__name__)
def test_page(scenario: Any, browser: Any, app: App, photos: dict[str, Path],
              tmp_path: Path) -> None:
    """Each scenario in the browser (one test function, so that without Chromium the four
    skips share one summary line)."""
    scenario(browser, app, photos, tmp_path)


# ------------------------------------------------------------------ the server
def test_local_only_and_requests_from_other_sites_refused(app: App) -> None:
    assert build.__kwdefaults__["host"] == "127.0.0.1" and app.host == "127.0.0.1"
    status, body = _call(app, "/", headers={"Host": f"evil.example:{app.port}"})
    assert status == 403  # DNS rebinding: another name for this address
    status, _ = _call(app, "/api/session", {}, session=None)
    assert status == 403  # no custom header: a plain cross-site form post
    status, _ = _call(app, "/api/session", {}, headers={"Origin": "http://evil.example"})
    assert status == 403
    with urllib.request.urlopen(app.url) as r:
        csp = r.headers["Content-Security-Policy"]
        page = r.read().decode()
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "https://" not in page and "googleapis" not in page


def test_upload_over_the_size_limit_is_refused_and_serving_goes_on(app: App) -> None:
    sid, _ = _session_with_photo(app)
    status, body = _call(app, "/api/photos", os.urandom(3 * 2**20), session=sid)
    assert status == 413 and b"over this page's limit of 2.0 MB" in body
    status, _ = _call(app, "/api/session", {})
    assert status == 200


def test_costly_methods_show_their_cost_then_progress_and_stop(app: App) -> None:
    """Score-CAM's forwards are estimated before it runs, counted while it runs, and a
    stop leaves the model as it was."""
    model = app.model.model
    sid, photo = _session_with_photo(app)
    ask = {"photo": photo["id"], "methods": ["gradcam", "scorecam"], "faithfulness": True}
    status, body = _call(app, "/api/estimate", ask, session=sid)
    estimate = _job(app, sid, body)["result"]
    forwards = estimate["methods"]["scorecam"]["forwards"]
    assert 100 < forwards <= 1280 and estimate["methods"]["scorecam"]["seconds"] > 0
    assert estimate["faithfulness"]["forwards"] == 2 * 2 * (10 + 1)
    status, body = _call(app, "/api/explain", ask, session=sid)
    jid = json.loads(body)["job"]
    seen = {}
    while not seen.get("total"):
        seen = json.loads(_call(app, f"/api/jobs/{jid}", session=sid)[1])
        assert seen["state"] in ("queued", "running"), seen
        time.sleep(0.02)
    assert seen["stage"].startswith("scorecam:") and seen["total"] == forwards
    status, _ = _call(app, f"/api/jobs/{jid}/cancel", {}, session=sid)
    state = _job(app, sid, json.dumps({"job": jid}).encode())
    assert status == 200 and state["state"] == "cancelled", state
    assert _hooks(model) == 0 and not model.training
    assert all(p.grad is None for p in model.parameters())


def test_twenty_requests_leak_no_memory_and_no_hooks(app: App) -> None:
    """20 explanations (pictures and downloads included) through the server: no hook is
    left on the model, the results kept stay bounded, and memory stops growing."""
    model = app.model.model
    modes = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    sid, photo = _session_with_photo(app)
    classes = [p["class"] for p in photo["predictions"]]

    def explain(i: int) -> None:
        ask = {"photo": photo["id"], "methods": ["gradcam", ["layercam", "hirescam"][i % 2]],
               "target": classes[i % len(classes)], "counterfactual": i % 3 == 0,
               "faithfulness": i % 15 == 1}
        status, body = _call(app, "/api/explain", ask, session=sid)
        state = _job(app, sid, body)
        assert state["state"] == "done", state
        rid = state["result"]["id"]
        paths = ["grid.png?alpha=0.5&colormap=jet", "overlay/gradcam.png?alpha=0.3",
                 "maps/gradcam.npy"] + ["camlens.zip?colormap=turbo"] * (i % 5 == 2)
        for path in paths:
            status, data = _call(app, f"/api/results/{sid}/{rid}/{path}", session=None)
            assert status == 200 and len(data) > 1000, path

    tracemalloc.start()
    try:
        for i in range(5):  # warm-up: every kind of request once, caches filled
            explain(i)
        gc.collect()
        rss, traced, tensors = _rss_mb(), tracemalloc.get_traced_memory()[0], _count_tensors()
        steps = [rss]
        for i in range(5, 25):
            explain(i)
            if i % 5 == 4:
                gc.collect()
                steps.append(_rss_mb())
        traced = (tracemalloc.get_traced_memory()[0] - traced) / 2**20
    finally:
        tracemalloc.stop()
    grown, more_tensors = steps[-1] - rss, _count_tensors() - tensors
    print(f"\n20 requests: Python and numpy memory {traced:+.2f} MiB, tensors {more_tensors:+d}, "
          f"RSS {rss:.0f} -> {steps[-1]:.0f} MiB (every 5 requests: "
          f"{', '.join(f'{b - a:+.1f}' for a, b in zip(steps, steps[1:]))})")
    assert _hooks(model) == 0
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())
    assert len(app.sessions.get(sid).results) <= app.limits.results
    # what is kept is bounded: 20 requests leave no tensor behind, and less Python and
    # numpy memory than one result holds (its maps and pictures: about 2 MiB)
    assert more_tensors <= 0 and traced < 1.0
    # the process's memory levels off: the peak over the last 10 requests is hardly above
    # that over the first 10 (glibc's per-thread arenas fill during the first requests, and
    # a faithfulness batch comes and goes: RSS wanders by +-10 MiB; 80 requests stay flat);
    # a leak would keep raising it
    assert max(steps[3:]) - max(steps[:3]) < 20 and grown < 150, steps


def _count_tensors() -> int:
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def test_a_keras_model_through_the_page() -> None:
    """A Keras 3 model (torch backend) is explained like a PyTorch one: Keras layer names are
    offered and taken, and its weights are left as they were."""
    import keras

    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(features)
    outputs = keras.layers.Dense(3, activation="softmax", name="fc")(pooled)
    kmodel = keras.Model(inputs, outputs, name="tiny")
    weights = [w.copy() for w in kmodel.get_weights()]
    preprocess = camlens.models.preprocessing("unit", crop=32)
    with build(kmodel, preprocess=preprocess, labels=["red", "green", "blue"], port=0,
               curve_steps=4) as kapp:
        status, body = _call(kapp, "/api/session", {})
        info = json.loads(body)
        assert {"conv", "gap", "fc"} <= set(info["layers"])  # Keras names
        sid = info["session"]
        status, body = _call(kapp, "/api/samples/coffee", {}, session=sid)
        photo = _job(kapp, sid, body)["result"]
        assert {p["name"] for p in photo["predictions"]} == {"red", "green", "blue"}
        ask = {"photo": photo["id"], "methods": ["gradcam", "layercam"], "layer": "conv",
               "target": "green", "faithfulness": True}
        status, body = _call(kapp, "/api/explain", ask, session=sid)
        state = _job(kapp, sid, body)
        assert state["state"] == "done", state
        result = state["result"]
        assert result["layers"] == ["conv"] and result["target"]["name"] == "green"
        assert result["map_size"] == [32, 32] and set(result["faithfulness"]["deletion"]) <= {
            "gradcam", "layercam"}
        status, data = _call(kapp, f"/api/results/{sid}/{result['id']}/maps/layercam.npy",
                             session=None)
        layercam = np.load(io.BytesIO(data))
        assert status == 200 and layercam.shape == (32, 32) and np.isfinite(layercam).all()
    assert all(np.array_equal(a, b) for a, b in zip(weights, kmodel.get_weights()))


# ------------------------------------------------------------------ the command
def test_camlens_app_command_serves_then_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the default SIGINT disposition: a shell's background job (CI) inherits it ignored
    proc = subprocess.Popen([sys.executable, "-m", "camlens", "app", "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = ""
        deadline = time.monotonic() + 120
        while " at http" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "camlens app exited before serving"
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200 and b"camlens" in r.read()
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("require", ["", "1"], ids=["skips", "required-fails"])
def test_missing_chromium_skips_with_how_to_enable_or_fails_when_required(
        require: str, tmp_path: Path) -> None:
    """Without a Chromium the browser tests skip with one line saying how to enable them;
    under CAMLENS_REQUIRE_BROWSER=1 (as .ci/run sets) they fail instead."""
    test = tmp_path / "test_missing.py"
    test.write_text(
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_app import browser  # noqa: F401\n"
        "def test_needs_browser(browser):\n"
        "    pass\n"
    )
    env = dict(os.environ, CAMLENS_CHROMIUM=str(tmp_path / "no" / "chromium"),
               CAMLENS_REQUIRE_BROWSER=require)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          str(test)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env=env)
    missing = f"no Chromium at {tmp_path / 'no' / 'chromium'}"
    if require:
        assert run.returncode == 1 and "1 error" in run.stdout, run.stdout
        assert f"{missing}, and CAMLENS_REQUIRE_BROWSER=1 requires" in run.stdout, run.stdout
        assert "skipped" not in run.stdout
    else:
        assert run.returncode == 0 and "1 skipped" in run.stdout, run.stdout
        lines = [line for line in run.stdout.splitlines() if line.startswith("SKIPPED")]
        assert len(lines) == 1, run.stdout
        assert f"{missing}: to run the browser tests, apt-get install chromium" in lines[0], lines
