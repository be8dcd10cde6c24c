"""A screenshot of ``camlens app`` in use, for the README: ``docs/images/app.png``.

Serves the page for the bundled EfficientNet-Lite0 on a free local port, opens it in a
headless Chromium (Debian's ``chromium`` package, driven by Playwright; no browser is
downloaded), picks four methods, uploads scikit-image's ``chelsea``, waits for the maps and
the faithfulness curves, and saves the page.

Run: ``python examples/app_screenshot.py [--out DIR] [--chromium PATH]`` (default
``docs/images``). Needs ``pip install 'camlens[app,test]'`` and ``apt-get install chromium``.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

METHODS = ("gradcam", "gradcam++", "layercam", "eigencam")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


def main(out: str | Path = "docs/images", chromium: str = "/usr/bin/chromium") -> Path:
    from PIL import Image
    from playwright.sync_api import sync_playwright
    from skimage import data

    from camlens.app import build
    from camlens.viz import save_image

    if not Path(chromium).exists():
        raise SystemExit(f"no Chromium at {chromium}: apt-get install -y chromium")
    target = Path(out) / "app.png"
    with tempfile.TemporaryDirectory() as tmp, build(port=0) as app, sync_playwright() as p:
        photo = Path(tmp) / "chelsea.jpg"
        save_image(data.chelsea(), photo)
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 1000},
                                device_scale_factor=1)
        page.set_default_timeout(300_000)
        page.goto(app.url)
        page.wait_for_selector('input[name="method"]', state="attached")
        for box in page.query_selector_all('input[name="method"]'):
            if box.is_checked() != (box.get_attribute("value") in METHODS):
                box.click()
        page.set_input_files("#upload", str(photo))
        page.wait_for_function(
            "() => { const r = document.getElementById('results');"
            " return !r.hidden && r.dataset.result && document.body.dataset.busy === '0'"
            " && [...r.querySelectorAll('img')].every((i) => i.complete && i.naturalWidth); }")
        page.wait_for_function("() => document.getElementById('estimate').textContent"
                               ".startsWith('Estimated')")
        page.mouse.move(0, 0)  # no button left looking hovered
        shot = page.screenshot(full_page=True)
        browser.close()
    # 256 colours are plenty for a page: a third of the bytes of the full-colour PNG
    picture = Image.open(io.BytesIO(shot)).convert("RGB")
    target.parent.mkdir(parents=True, exist_ok=True)
    picture.quantize(256, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        target, optimize=True)
    print(f"saved {target}")
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the picture")
    parser.add_argument("--chromium", default="/usr/bin/chromium",
                        help="a Chromium to drive (default: Debian's)")
    args = parser.parse_args()
    main(args.out, args.chromium)
