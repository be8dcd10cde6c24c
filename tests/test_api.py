"""The public API is what ``__all__`` says, and ``import camlens`` stays light."""

from __future__ import annotations

import subprocess
import sys
import types

import camlens


def test_all_is_sorted_and_complete():
    assert camlens.__all__ == sorted(camlens.__all__)
    public = {
        n for n in dir(camlens)
        if not n.startswith("_") and not isinstance(getattr(camlens, n), types.ModuleType)
    }
    assert public <= set(camlens.__all__) | {"annotations"}
    assert camlens.viz.overlay and camlens.cli.main  # lazy submodules
    for name in camlens.__all__:
        assert hasattr(camlens, name)
    for name in ["explain", "Explainer", "available_methods", "TopK", "compare", "boxes",
                 "masks", "load_model"]:
        assert name in camlens.__all__


def test_import_is_light():
    code = (
        "import sys, camlens; heavy = [m for m in ('torchvision', 'PIL', 'matplotlib', 'cv2')"
        " if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
