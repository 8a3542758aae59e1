"""Layers the networks share: a flatten that adapts to the input side, and a depthwise convolution with a fast
backward pass for bf16 training on CPU.

PyTorch's CPU backward of a bf16 depthwise convolution is far slower than its fp32 backward for kernels over 3×3 or
strides over 1 (3×3 at stride 1 is fast in bf16, so it is left alone). EfficientNets fine-tune such layers, so
:class:`DepthwiseConv2d` runs its backward in fp32 and everything else as before. Measured training img/s, fast
against native (benchmarks/results/depthwise_backward.json): the last 25% of EfficientNet-Lite2 at 224 px 1.67×,
the last 30% 2.44×, the last 50% at 96 px 2.62×, all of Lite0 at 96 px 2.59×.
"""

import torch
import torch.nn.functional as F
from torch import nn


class PooledFlatten(nn.Module):
    """Flatten a feature map average-pooled to ``size``×``size``: the reference's Flatten at its 32-px input (where the
    map already has that size and nothing is pooled), a pooled head at any other side. No parameters."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            x = F.adaptive_avg_pool2d(x, self.size)
        return x.flatten(1)


def slow_in_bf16(conv: nn.Conv2d) -> bool:
    """True for the depthwise convolutions whose bf16 backward is slow on CPU: kernel over 3×3 or stride over 1."""
    return max(conv.kernel_size) > 3 or max(conv.stride) > 1


def _conv_backward(grad, x, weight, stride, padding, groups, mask: list[bool]) -> tuple:
    """(grad of x, grad of weight) of a bias-free ``conv2d``, each None unless ``mask`` asks for it."""
    grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
        grad, x, weight, None, stride, padding, [1, 1], False, [0, 0], groups, [*mask, False]
    )
    return grad_x, grad_w


class _DepthwiseConv(torch.autograd.Function):
    """``conv2d(x, weight)`` whose weight gradient runs in fp32 (and whose input gradient does too, except at stride 1
    in channels_last, where bf16 is fast: 8.7 ms against 31 ms in fp32 for 128 × 720 × 14 × 14 at 5×5)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, groups):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, groups)
        return nn.functional.conv2d(x, weight, None, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, groups = ctx.conv
        need_x, need_w = ctx.needs_input_grad[:2]
        grad_x = grad_w = None
        if need_x and tuple(stride) == (1, 1) and x.is_contiguous(memory_format=torch.channels_last):
            grad_x, _ = _conv_backward(grad, x, weight, stride, padding, groups, [True, False])
            need_x = False
        if need_x or need_w:
            fp32_x, grad_w = _conv_backward(
                grad.float(), x.float(), weight.float(), stride, padding, groups, [need_x, need_w]
            )
            grad_x = fp32_x.to(x.dtype) if fp32_x is not None else grad_x
            grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        return grad_x, grad_w, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters and state dict) whose bf16 CPU training takes the fp32 backward;
    ``same_padding`` pads like timm's ``Conv2dSame`` (TensorFlow's asymmetric 'SAME')."""

    same_padding = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_padding:
            from timm.layers import pad_same

            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        training = torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad)
        bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        if not (x.device.type == "cpu" and training and bf16):
            return self._conv_forward(x, self.weight, self.bias)
        weight = self.weight.to(torch.bfloat16)
        return _DepthwiseConv.apply(x.to(torch.bfloat16), weight, self.stride, self.padding, self.groups)


def use_fast_depthwise(model: nn.Module, fast: bool = True) -> int:
    """Turn ``model``'s bias-free depthwise convolutions (``nn.Conv2d`` or timm's ``Conv2dSame``) whose bf16
    backward is slow into :class:`DepthwiseConv2d` in place (``fast=False``: back again); returns how many.
    Parameters, state dict and outputs are unchanged."""
    from timm.layers import Conv2dSame

    count = 0
    for module in model.modules():
        if not fast and isinstance(module, DepthwiseConv2d):
            module.__class__ = Conv2dSame if module.same_padding else nn.Conv2d
            count += 1
        elif (
            fast
            and type(module) in (nn.Conv2d, Conv2dSame)
            and module.groups == module.in_channels == module.out_channels > 1
            and module.bias is None
            and slow_in_bf16(module)
            and module.dilation == (1, 1)
            and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple)
        ):
            same = type(module) is Conv2dSame
            module.__class__ = DepthwiseConv2d
            module.same_padding = same
            count += 1
    return count
