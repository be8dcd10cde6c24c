"""The typed description of a dataset run (:class:`RunSpec`) and what it gives back
(:class:`RunResult`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunSpec:
    """Everything an ``explain`` run over files needs: what :func:`camlens.run` takes and
    ``camlens explain`` parses (see :func:`camlens.run` for each field)."""

    paths: Sequence[str]
    out: str = "camlens-out"
    model: str = "efficientnet-lite0"  # a spec, or the class name of ``model_object``
    method: str = "gradcam"
    layer: str | None = None
    target: str = "top1"
    counterfactual: bool = False
    save: str | Sequence[str] = "overlay,grid,npy"
    options: Sequence[str] = ()  # "[METHOD.]NAME=VALUE"
    weights: str | None = None
    trust_model: bool = False
    preprocess: Any = None
    batch_size: int = 8
    device: str = "auto"
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
    model_object: Any = None  # a model handed as an object (then ``model`` names its class)
    labels: Sequence[str] | None = None  # the class names of ``model_object``

    @classmethod
    def of(cls, settings: Any) -> RunSpec:
        """``settings`` as a ``RunSpec``: itself, or any object with these attributes
        (``option`` is read as ``options``); the missing ones take their defaults."""
        if isinstance(settings, cls):
            return settings
        given = dict(vars(settings))
        if "option" in given and "options" not in given:
            given["options"] = given.pop("option") or ()
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in given.items() if k in names})


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
