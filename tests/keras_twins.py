"""One small CNN built twice, in Keras and in PyTorch, with the same float64 weights.

conv-bn-relu, pad + stride-2 conv-bn-relu, global average pooling, dense (softmax in Keras,
the logits in PyTorch: camlens explains a Keras model's logits). The same weights through
two frameworks must give the same maps for every method: the strongest check of the Keras
adapters. Importable by the TensorFlow-backend subprocess tests (no pytest, no fixtures);
``KERAS_BACKEND`` must be set before this module is imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

SIZE = 16
CLASSES = 5


def keras_twin(seed: int = 0) -> Any:
    import keras
    from keras import layers

    kw = {"dtype": "float64"}
    inp = keras.Input((SIZE, SIZE, 3), dtype="float64")
    h = layers.Conv2D(6, 3, padding="same", name="conv1", **kw)(inp)
    h = layers.BatchNormalization(name="bn1", **kw)(h)
    h = layers.ReLU(name="relu1", **kw)(h)
    h = layers.ZeroPadding2D(1, name="pad2", **kw)(h)
    h = layers.Conv2D(8, 3, strides=2, name="conv2", **kw)(h)
    h = layers.BatchNormalization(name="bn2", **kw)(h)
    h = layers.ReLU(name="relu2", **kw)(h)
    h = layers.GlobalAveragePooling2D(name="gap", **kw)(h)
    out = layers.Dense(CLASSES, activation="softmax", name="fc", **kw)(h)
    model = keras.Model(inp, out, name="twin")
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for v in layer.weights:
            shape = tuple(int(d) for d in v.shape)
            name = v.path.rsplit("/", 1)[-1]
            if name == "moving_variance":
                values.append(rng.uniform(0.5, 1.5, shape))
            elif name in ("moving_mean", "beta", "bias"):
                values.append(rng.normal(0, 0.1, shape))
            elif name == "gamma":
                values.append(rng.uniform(0.8, 1.2, shape))
            else:
                fan = int(np.prod(shape[:-1]))
                values.append(rng.normal(0, 1 / np.sqrt(fan), shape))
        if values:
            layer.set_weights(values)
    return model


class TorchTwin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6, eps=1e-3)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(8, eps=1e-3)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def torch_twin(keras_model: Any) -> TorchTwin:
    """The PyTorch model with the Keras model's weights (float64, eval mode)."""
    net = TorchTwin().double().eval()

    def w(name: str) -> list[np.ndarray]:
        return [np.asarray(v) for v in keras_model.get_layer(name).get_weights()]

    with torch.no_grad():
        for conv in ("conv1", "conv2"):
            kernel, bias = w(conv)
            getattr(net, conv).weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
            getattr(net, conv).bias.copy_(torch.from_numpy(bias))
        for bn in ("bn1", "bn2"):
            gamma, beta, mean, var = w(bn)
            m = getattr(net, bn)
            m.weight.copy_(torch.from_numpy(gamma))
            m.bias.copy_(torch.from_numpy(beta))
            m.running_mean.copy_(torch.from_numpy(mean))
            m.running_var.copy_(torch.from_numpy(var))
        kernel, bias = w("fc")
        net.fc.weight.copy_(torch.from_numpy(kernel.T))
        net.fc.bias.copy_(torch.from_numpy(bias))
    return net


def images(n: int = 2, seed: int = 1) -> np.ndarray:
    """Channels-last float64 inputs (n, SIZE, SIZE, 3)."""
    return np.random.default_rng(seed).normal(size=(n, SIZE, SIZE, 3))


def max_differences(keras_maps: dict[str, Any], torch_maps: dict[str, Any]) -> dict[str, Any]:
    """Per method: the max absolute difference, or the error text of either side."""
    out: dict[str, Any] = {}
    for name, km in keras_maps.items():
        tm = torch_maps[name]
        if isinstance(km, Exception) or isinstance(tm, Exception):
            out[name] = {"keras_error": str(km) if isinstance(km, Exception) else None,
                         "torch_error": str(tm) if isinstance(tm, Exception) else None}
        else:
            out[name] = float((km.double() - tm.double()).abs().max())
    return out
