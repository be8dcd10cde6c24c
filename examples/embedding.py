"""Explain an image embedding with ``camlens.SimilarityTarget``: what makes two images similar.

The embedding is the pooled 1280-d feature vector of the bundled *pretrained*
EfficientNet-Lite0 (a retrieval tower; no download). The query is scikit-image's
``astronaut``; the references are (1) a crop of her face and (2) the ``rocket`` photo.
``SimilarityTarget(reference)`` explains the cosine similarity of the query's embedding
with the reference's: the face reference should light up the face, the rocket reference
the model of the space shuttle behind her. Prints the similarities and the share of each
map's energy inside the face and the shuttle; saves ``task_embedding.png``.

The same works for any model whose output is an embedding (B, D), or a Hugging Face output
with ``image_embeds`` / ``pooler_output`` (CLIP's image tower, DINOv2)::

    target = camlens.targets.SimilarityTarget(reference_embedding)     # (D,) or (B, D)
    maps = camlens.explain(embedder, x, layer="backbone", target=target)

Run: ``python examples/embedding.py [--out DIR]`` (default ``docs/images``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _lite import Features, resized, to_input  # examples/_lite.py
from skimage import data
from torch import Tensor, nn

import camlens
from camlens import metrics, viz
from camlens.targets import SimilarityTarget

METHODS = ["gradcam", "layercam"]
SIZE = 256  # the astronaut (512 x 512) is explained at 256 x 256: an 8 x 8 feature map
FACE = (160, 30, 300, 200)  # x1, y1, x2, y2 in the astronaut's 512 x 512 pixels
SHUTTLE = (345, 0, 470, 270)  # the space shuttle model on the right


class Embedder(nn.Module):
    """Image -> (B, 1280) embedding: globally averaged last features."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.backbone = Features(classifier)

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x).mean((2, 3))


def scaled_box(box: tuple[int, ...], scale: float) -> list[float]:
    return [v * scale for v in box]


def main(out: str | Path = "docs/images") -> dict[str, dict[str, float]]:
    """Explain astronaut-vs-face and astronaut-vs-rocket similarity; returns the numbers."""
    classifier, preprocess, _ = camlens.load_model()
    embedder = Embedder(classifier).eval()
    astronaut = data.astronaut()
    x1, y1, x2, y2 = FACE
    references = {
        "her face": to_input(astronaut[y1:y2, x1:x2], (224, 224), preprocess),
        "rocket photo": to_input(data.rocket(), (224, 320), preprocess),
    }
    x = to_input(astronaut, (SIZE, SIZE), preprocess)
    scale = SIZE / astronaut.shape[0]
    boxes = {"face": scaled_box(FACE, scale), "shuttle": scaled_box(SHUTTLE, scale)}
    with torch.no_grad():
        query = embedder(x)
        embeddings = {name: embedder(ref)[0] for name, ref in references.items()}
    small = resized(astronaut, (SIZE, SIZE))
    pictures, titles, results = [], [], {}
    for name, reference in embeddings.items():
        cosine = float(F.cosine_similarity(query, reference[None])[0])
        maps = camlens.compare(embedder, x, METHODS, layer="backbone",
                               target=SimilarityTarget(reference))
        row: dict[str, float] = {"cosine": cosine}
        print(f"astronaut vs {name}: cosine similarity {cosine:.3f}")
        for m in METHODS:
            shares = {k: float(metrics.energy_pointing_game(maps[m], torch.tensor([b]))[0])
                      for k, b in boxes.items()}
            row.update({f"energy_in_{k}_{m}": v for k, v in shares.items()})
            print(f"  {m:<9} map energy in the face box {shares['face']:.1%}, "
                  f"in the shuttle box {shares['shuttle']:.1%}")
            pictures.append(viz.overlay(small, maps[m][0]))
            titles.append(f"{m}, vs {name}")
        results[name] = row
    area = {k: (b[2] - b[0]) * (b[3] - b[1]) / SIZE**2 for k, b in boxes.items()}
    print(f"(the face box covers {area['face']:.1%} of the image, the shuttle box "
          f"{area['shuttle']:.1%})")
    face = resized(astronaut[y1:y2, x1:x2], (SIZE, round(SIZE * (x2 - x1) / (y2 - y1))))
    face = np.pad(face, ((0, 0), (0, SIZE - face.shape[1]), (0, 0)), constant_values=255)
    sheet = viz.compose_grid(small, [face, *pictures],
                             ["reference: her face", *titles], image_title="query",
                             panel_height=224)
    path = sheet.save(Path(out) / "task_embedding.png")
    print(f"saved {path}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the picture")
    main(parser.parse_args().out)
