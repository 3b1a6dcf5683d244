"""Small building blocks shared by the networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    dilation: int = 1,
    batch_norm: bool = True,
) -> nn.Sequential:
    """``Conv2d -> [BatchNorm2d] -> ReLU`` with "same" padding.

    Args:
        in_channels: Input channels C_in.
        out_channels: Output channels C_out.
        kernel_size: Odd kernel size.
        dilation: Dilation of the convolution; padding keeps H and W unchanged.
        batch_norm: Insert a BatchNorm2d (then the conv has no bias).

    Returns:
        A module mapping (B, C_in, H, W) to (B, C_out, H, W).
    """
    padding = dilation * (kernel_size - 1) // 2
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=padding,
            dilation=dilation,
            bias=not batch_norm,
        )
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def he_normal_(module: nn.Module) -> None:
    """He initialisation of every (transposed) convolution in ``module``, biases zero.

    Weights ~ N(0, sqrt(2 / N)), N = the number of inputs of one output neuron (He et al. 2015,
    https://arxiv.org/abs/1502.01852; U-Net, Ronneberger et al. 2015, Sec. 3: "for a 3x3
    convolution and 64 feature channels in the previous layer N = 9 * 64 = 576"). For a
    ``Conv2d`` N = C_in / groups * kh * kw (torch's ``fan_in``). A ``ConvTranspose2d`` with
    stride s feeds each output from C_in / groups * (kh / s_h) * (kw / s_w) inputs on average
    (C_in for U-Net's 2x2, stride-2 up-convolution), not from torch's ``fan_in``, which counts
    the output channels of its (C_in, C_out / groups, kh, kw) weight.
    """
    for m in module.modules():
        if isinstance(m, nn.ConvTranspose2d):
            (kh, kw), (sh, sw) = m.kernel_size, m.stride
            n_inputs = m.in_channels / m.groups * (kh / sh) * (kw / sw)
        elif isinstance(m, nn.Conv2d):
            n_inputs = m.weight[0].numel()  # C_in / groups * kh * kw
        else:
            continue
        nn.init.normal_(m.weight, 0.0, (2.0 / n_inputs) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """Weights that make a ``ConvTranspose2d`` perform bilinear upsampling, channel-wise.

    The same construction as the FCN reference (``surgery.interp``), see
    Long et al., https://arxiv.org/abs/1411.4038.

    Args:
        channels: C; the kernel is diagonal over channels (no cross-channel mixing).
        kernel_size: K, usually ``2 * stride``.

    Returns:
        Tensor of shape (C, C, K, K).
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt_1d = 1 - (og - center).abs() / factor
    filt = filt_1d[:, None] * filt_1d[None, :]
    weight = torch.zeros(channels, channels, kernel_size, kernel_size, dtype=torch.float64)
    weight[range(channels), range(channels)] = filt
    return weight.float()


def bilinear_upsample_layer(
    channels: int, stride: int, trainable: bool = True
) -> nn.ConvTranspose2d:
    """A ``ConvTranspose2d(C, C, 2s, stride=s, padding=s//2)`` initialised to bilinear upsampling.

    With ``kernel_size = 2 * stride`` and ``padding = stride // 2`` (even stride) the output is
    exactly ``stride`` times the input size and, away from the borders, equals
    ``F.interpolate(x, scale_factor=stride, mode="bilinear", align_corners=False)``.

    Args:
        channels: C, input and output channels.
        stride: Upsampling factor s (even, or 1).
        trainable: If False the weights are frozen (FCN's fixed final upsampling variant).

    Returns:
        A layer mapping (B, C, H, W) to (B, C, s*H, s*W).
    """
    kernel_size = 2 * stride
    layer = nn.ConvTranspose2d(
        channels, channels, kernel_size, stride=stride, padding=stride // 2, bias=False
    )
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, kernel_size))
    layer.weight.requires_grad_(trainable)
    return layer


@torch.jit.script_if_tracing
def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "constant") -> torch.Tensor:
    """Pad the bottom and right of ``x`` so that H and W become multiples of ``multiple``.

    Shape-generic on purpose: no early return, and scripted when traced, so TorchScript and ONNX
    exports keep a dynamic height and width.

    Args:
        x: (B, C, H, W).
        multiple: Target divisor m, e.g. the net's output stride.
        mode: ``"constant"`` (zeros), ``"reflect"`` or ``"replicate"``. Reflection needs the pad
            to be smaller than the side; tiny inputs fall back to ``"replicate"``. Reflection
            is a gather of computed indices, not ``F.pad``, so that this fallback is part of an
            exported graph too (ONNX Runtime refuses a reflect pad wider than the side).

    Returns:
        (B, C, ceil(H / m) * m, ceil(W / m) * m).
    """
    h, w = x.shape[-2], x.shape[-1]
    pad_h = (multiple - h % multiple) % multiple
    pad_w = (multiple - w % multiple) % multiple
    if mode != "reflect":
        return F.pad(x, [0, pad_w, 0, pad_h], mode=mode)
    rows = torch.arange(h + pad_h, device=x.device)  # (H',)
    cols = torch.arange(w + pad_w, device=x.device)  # (W',)
    reflect_rows = torch.where(rows < h, rows, rows.neg() + 2 * (h - 1))  # < 0: pad >= side
    reflect_cols = torch.where(cols < w, cols, cols.neg() + 2 * (w - 1))
    tiny = (reflect_rows.min() < 0) | (reflect_cols.min() < 0)  # either side: replicate both
    rows = torch.where(tiny, torch.where(rows < h, rows, h - 1), reflect_rows)
    cols = torch.where(tiny, torch.where(cols < w, cols, w - 1), reflect_cols)
    return x.index_select(2, rows).index_select(3, cols)  # (B, C, H', W')


def conv2d_as_matmul(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for a stride-1, unpadded, ungrouped convolution, as one matrix product.

    Each output position's receptive field becomes a row (channels_last im2col: kernel row,
    kernel column, channel), multiplied by the weight seen as (O, kh * kw * C), a view of a
    channels_last weight. For VGG16's fc6 (7 x 7, 512 -> 4096) on FCN's stride-32 maps (a few
    dozen positions) oneDNN's convolution runs far below the GEMM rate: on the 2-core
    AVX512-BF16 CPU the product took 192 vs 307 ms forward and 0.68 vs 1.49 s forward + backward
    (bf16, 4 x 512 x 12 x 12 in); the dilated fc6 on stride-8 maps has enough positions for
    the convolution and ran 1.2x slower as a product, so it stays a convolution.

    Args:
        x: Input (B, C, H, W), any memory format, already padded as the layer needs.
        conv: The layer whose weight (O, C, kh, kw), bias and dilation are used
            (its ``padding`` must be 0 and its stride and groups 1).

    Returns:
        (B, O, H - d (kh - 1), W - d (kw - 1)) in channels_last strides.
    """
    b, c = x.shape[:2]
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    oh, ow = x.shape[2] - dh * (kh - 1), x.shape[3] - dw * (kw - 1)
    windows = x.unfold(2, dh * (kh - 1) + 1, 1).unfold(3, dw * (kw - 1) + 1, 1)  # views
    fields = windows[..., ::dh, ::dw]  # (B, C, oh, ow, kh, kw): the dilated taps
    rows = fields.permute(0, 2, 3, 4, 5, 1).reshape(b * oh * ow, kh * kw * c)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, kh * kw * c)
    out = F.linear(rows, weight, conv.bias)  # (B * oh * ow, O)
    return out.view(b, oh, ow, -1).permute(0, 3, 1, 2)  # (B, O, oh, ow)


class MatmulConv2d(nn.Conv2d):
    """An unpadded, stride-1 ``nn.Conv2d`` (same parameters and state dict) computed by
    :func:`conv2d_as_matmul` when run eagerly: VGG16's fc6 in the FCNs, where it is faster.

    Under ``torch.compile`` / ``torch.export`` it is a plain convolution: inductor picks its own
    kernels, and the export's dynamic batch size does not survive the product's reshapes.
    Forward hooks see it as any module (``explain.py`` layers).

    Shapes:
        ``forward``: (B, C, H, W) -> (B, O, H - d (kh - 1), W - d (kw - 1)).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return super().forward(x)
        return conv2d_as_matmul(x, self)
