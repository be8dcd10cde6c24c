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


def test_metrics_and_labels_rooms_keep_their_names():
    """``camlens.metrics`` and ``camlens.labels`` are packages of one module per family:
    every name read from them before still imports, each from its family's module."""
    import camlens.labels as L
    import camlens.metrics as M

    families = {
        "_faithfulness": ["ConfidenceChange", "confidence_change", "deletion", "gaussian_blur",
                          "insertion", "win_rate"],
        "_road": ["noisy_linear_impute", "road"],
        "_localisation": ["MaxBoxAcc", "box_iou", "energy_pointing_game", "localization_error",
                          "max_box_acc", "pointing_game", "_component_boxes"],
        "_segmentation": ["MeanIoU", "miou", "_confusion", "_from_confusion"],
        "_sanity": ["SanityCheck", "sanity_check", "spearman", "ssim"],
    }
    labels = {
        "_rule": ["pseudo_masks", "weak_boxes"],
        "_writers": ["coco_json", "save_voc_png", "voc_palette"],
        "_inputs": ["ClassSet"],
        "_folder": ["label_folder", "good_methods"],
        "": ["make_labels"],
    }
    for package, rooms in ((M, families), (L, labels)):
        assert package.__all__ == sorted(package.__all__)
        public = sorted(n for names in rooms.values() for n in names if not n.startswith("_")
                        and n not in ("label_folder", "good_methods"))
        assert package.__all__ == public
        for room, names in rooms.items():
            for name in names:
                where = f"{package.__name__}.{room}" if room else package.__name__
                assert getattr(package, name).__module__ == where, name
    assert M.derive_boxes is camlens.boxes  # camlens.evaluation reads it as M.derive_boxes
    assert (L.IGNORE, L.MAX_CLASSES) == (255, 254)
