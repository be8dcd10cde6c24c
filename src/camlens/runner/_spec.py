"""The typed description of a dataset run (:class:`RunSpec`) and what it gives back
(:class:`RunResult`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(kw_only=True)
class ModelSettings:
    """The model of a command over files and where it runs: what
    :func:`camlens.runner._setup.load` and the fingerprint of a resumable run read. Every
    command's spec (:class:`RunSpec`, :class:`camlens.evaluation.EvaluationSpec`, the
    labels' and the audit's) is one."""

    model: str = "efficientnet-lite0"  # a spec, or the class name of ``model_object``
    weights: str | None = None
    trust_model: bool = False
    preprocess: Any = None
    layer: str | None = None
    device: str = "auto"
    model_object: Any = None  # a model handed as an object (then ``model`` names its class)
    labels: Sequence[str] | None = None  # the class names of ``model_object``


@dataclass
class RunSpec(ModelSettings):
    """Everything an ``explain`` run over files needs: what :func:`camlens.run` takes and
    ``camlens explain`` parses (see :func:`camlens.run` for each field)."""

    paths: Sequence[str]
    out: str = "camlens-out"
    method: str = "gradcam"
    target: str = "top1"
    counterfactual: bool = False
    save: str | Sequence[str] = "overlay,grid,npy"
    options: Sequence[str] = ()  # "[METHOD.]NAME=VALUE"
    batch_size: int = 8
    alpha: float = 0.5
    colormap: str = "jet"
    threshold: float = 0.2
    max_pixels: int | None = None
    progress: str = "never"
    restart: bool = False
    engine: str = "local"
    address: str | None = None
    actors: int | None = None
    threads: int | None = None


@dataclass
class Outcome(Mapping[str, Any]):
    """What a command over files did, built in memory: its output folder, ``summary`` (what
    the command writes as its summary file) and ``exit_code`` (1 if an image or a method
    failed). It reads as that dict too (``result["images"]``, ``result["exit_code"]``)."""

    out: Path
    summary: dict[str, Any]
    exit_code: int

    @property
    def images(self) -> int:
        return int(self.summary["images"])

    @property
    def failed(self) -> int:
        return int(self.summary["failed"])

    def _items(self) -> dict[str, Any]:
        return {**self.summary, "exit_code": self.exit_code}

    def __getitem__(self, key: str) -> Any:
        return self._items()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


@dataclass
class RunResult(Outcome):
    """What a run did, built in memory: the images done and failed (of the whole folder,
    resumed parts included), the methods that ran, failed or were skipped, the layer and
    the output folder. ``summary`` is what ``summary.json`` holds; the result reads as that
    dict too (``result["images"]``), with ``exit_code`` (1 if an image or a method failed)."""

    finished: int = 0  # images explained by this call (the rest were done before)
    errors: list[dict[str, str]] = field(default_factory=list)  # this call's skipped images

    @property
    def methods(self) -> list[str]:
        return list(self.summary["methods"])

    @property
    def layer(self) -> list[str]:
        return list(self.summary["layer"])
