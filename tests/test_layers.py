"""The fast-backward depthwise convolution computes what nn.Conv2d computes."""

import copy

import pytest
import torch
from timm.layers import Conv2dSame
from torch import nn

from imgclf.models.backbones import create_backbone
from imgclf.models.layers import DepthwiseConv2d, use_fast_depthwise


def grads(conv: nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", torch.bfloat16):
        out = conv(x)
    (out.float() * upstream).sum().backward()
    return out.float(), x.grad.float(), conv.weight.grad


@pytest.mark.parametrize("kernel,stride", [(5, 1), (5, 2), (3, 2), (7, 1)])
def test_fast_depthwise_matches_conv2d(kernel, stride):
    torch.manual_seed(0)
    native = nn.Conv2d(96, 96, kernel, stride, padding=kernel // 2, groups=96, bias=False)
    fast = copy.deepcopy(native)
    assert use_fast_depthwise(fast) == 1 and type(fast) is DepthwiseConv2d
    x = torch.randn(16, 96, 9, 9).contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(16, 96, *native(x).shape[2:])
    reference = copy.deepcopy(native)  # fp32 all the way: what bf16 approximates
    ref_x = x.clone().requires_grad_(True)
    ref_out = reference(ref_x)
    (ref_out * upstream).sum().backward()
    ref_gx, ref_gw = ref_x.grad, reference.weight.grad
    # the weight gradient sums n = N·H'·W' products per weight: where the sum itself runs in bf16 (unit roundoff
    # u = 2^-8) it errs by about sqrt(n)·u of the sum of their magnitudes; in fp32, by far less
    n = upstream.shape[0] * upstream.shape[2] * upstream.shape[3]
    abs_sum = torch.ops.aten.convolution_backward(
        upstream.abs(),
        x.abs(),
        reference.weight,
        None,
        [stride] * 2,
        [kernel // 2] * 2,
        [1, 1],
        False,
        [0, 0],
        96,
        [False, True, False],
    )[1]
    for name, (out, gx, gw) in {"native": grads(native, x, upstream), "imgclf": grads(fast, x, upstream)}.items():
        assert torch.allclose(out, ref_out.detach(), rtol=0.02, atol=0.05)
        assert torch.allclose(gx, ref_gx, rtol=0.02, atol=0.05)
        assert gw.dtype == torch.float32 and gw.shape == ref_gw.shape
        if name == "imgclf":  # its fp32 backward: 1% of the largest gradient, whatever the CPU's bf16
            assert (gw - ref_gw).abs().max() < 0.01 * ref_gw.abs().max(), name
        else:  # PyTorch's own bf16 kernel, which may round and sum in bf16 (oneDNN's AVX2 kernels do: off by 1.1%)
            assert ((gw - ref_gw).abs() <= n**0.5 * 2**-8 * abs_sum).all(), name
    assert torch.equal(grads(native, x, upstream)[0], grads(fast, x, upstream)[0])  # same bf16 forward


def test_only_slow_depthwise_convs_are_converted_and_state_dict_is_unchanged():
    layers = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),  # 3×3 at stride 1: native bf16 is fast
        nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False),
        nn.Conv2d(8, 16, 5, padding=2, bias=False),  # not depthwise
        nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=True),
    )
    keys = list(layers.state_dict())
    assert use_fast_depthwise(layers) == 1
    assert [type(m) for m in layers] == [nn.Conv2d, DepthwiseConv2d, nn.Conv2d, nn.Conv2d]
    assert list(layers.state_dict()) == keys

    native = create_backbone("tf_efficientnet_lite0", 10)
    model = copy.deepcopy(native)
    assert use_fast_depthwise(model) > 0
    converted = [m for m in model.modules() if isinstance(m, DepthwiseConv2d)]
    assert {(m.kernel_size, m.stride) for m in converted} == {((5, 5), (1, 1)), ((5, 5), (2, 2)), ((3, 3), (2, 2))}
    assert {m.same_padding for m in converted} == {True, False}  # strided ones were timm's Conv2dSame
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # timm's asymmetric 'SAME' padding kept
        assert torch.allclose(model.eval()(x), native.eval()(x), atol=1e-5)
    assert use_fast_depthwise(model, fast=False) == len(converted)
    assert [type(m) for m in model.modules()] == [type(m) for m in native.modules()]
    assert any(type(m) is Conv2dSame for m in model.modules())
