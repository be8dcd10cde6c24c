"""Layer finding and reshaping: auto choice, tokens, channels-last, explicit reshape."""

from __future__ import annotations

import torch
from torch import nn

import camlens
from camlens._layers import to_channels_first


def test_tokens_drop_class_token_and_infer_grid():
    tokens = torch.arange(2 * 50 * 3, dtype=torch.float32).view(2, 50, 3)
    out = to_channels_first(tokens, (2, 3, 224, 224), None)
    assert out.shape == (2, 3, 7, 7)
    assert torch.equal(out[:, :, 0, 0], tokens[:, 1])
    assert torch.equal(out[:, :, 6, 6], tokens[:, 49])
    dist = torch.randn(1, 198, 8)  # class + distillation tokens (DeiT)
    assert to_channels_first(dist, (1, 3, 224, 224), None).shape == (1, 8, 14, 14)
    wide = torch.randn(1, 1 + 14 * 20, 8)  # 224 x 320 input, 16 px patches
    assert to_channels_first(wide, (1, 3, 224, 320), None).shape == (1, 8, 14, 20)


def test_channels_last_and_gradients_with_two_leading_dims():
    x = torch.randn(2, 7, 7, 32)
    out = to_channels_first(x, (2, 3, 224, 224), None)
    assert torch.equal(out, x.permute(0, 3, 1, 2))
    g = torch.randn(2, 3, 7, 7, 32)
    assert torch.equal(to_channels_first(g, (2, 3, 224, 224), None, lead=2),
                       g.permute(0, 1, 4, 2, 3))


def test_reshape_callable_overrides():
    x = torch.randn(2, 16, 4)
    out = to_channels_first(x, (2, 3, 8, 8), lambda t: t.transpose(1, 2).reshape(2, 4, 4, 4))
    assert out.shape == (2, 4, 4, 4)


class TinyViT(nn.Module):
    """Patch embedding + class token + two blocks with norm1, like a ViT."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"norm1": nn.LayerNorm(16), "mlp": nn.Linear(16, 16)}) for _ in range(2)
        )
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        for blk in self.blocks:
            t = t + blk["mlp"](torch.relu(blk["norm1"](t)).mean(1, keepdim=True) + blk["norm1"](t))
        return self.head(self.norm(t)[:, 0])


def test_auto_on_tokens_prefers_last_block_norm1():
    torch.manual_seed(0)
    model = TinyViT()
    explainer = camlens.Explainer(model, "gradcam")
    maps = explainer(torch.randn(2, 3, 16, 16))
    assert explainer.layer_names == ["blocks.1.norm1"]
    assert maps.shape == (2, 16, 16) and torch.isfinite(maps).all()


def test_auto_picks_last_spatial_container_and_caches():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    calls = []
    model[0].register_forward_hook(lambda *a: calls.append(1))
    explainer = camlens.Explainer(model)
    x = torch.randn(3, 3, 12, 12)
    explainer(x)
    assert explainer.layer_names == ["2"]
    n = len(calls)
    explainer(x)
    assert len(calls) == n + 1  # no second probe for the same input shape


def test_one_dimensional_signals():
    model = nn.Sequential(nn.Conv1d(2, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                          nn.Flatten(), nn.Linear(6, 3))
    maps = camlens.explain(model, torch.randn(2, 2, 20))
    assert maps.shape == (2, 20)
    cam = camlens.explain(model, torch.randn(2, 2, 20), method="cam", layer="1")
    assert cam.shape == (2, 20)
