"""The fused BatchNorm → (+ residual) → ReLU computes what PyTorch's separate layers compute, where it applies."""

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imgclf.models import batchnorm_relu as fused
from imgclf.models import create_model

needs_kernels = pytest.mark.skipif(
    not (shutil.which("c++") or shutil.which("g++")), reason="the fused kernels need a C++ compiler"
)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


def run(bn: nn.BatchNorm2d, x, residual, upstream, use_kernels: bool):
    """Output, gradients (x, weight, bias, residual) and running statistics of relu(bn(x) + residual)."""
    x = x.detach().clone().requires_grad_()
    residual = residual.detach().clone().requires_grad_() if residual is not None else None
    if use_kernels:
        assert fused.fuses(bn, x, residual)
        out = fused.batchnorm_relu(bn, x, residual)
    else:  # the reference: PyTorch's layers in float32 on the same bf16 inputs
        out = F.relu(bn(x.float()) + (residual.float() if residual is not None else 0))
    (out.float() * upstream).sum().backward()
    grads = [x.grad, bn.weight.grad, bn.bias.grad, residual.grad if residual is not None else None]
    return [out, *grads, bn.running_mean, bn.running_var, bn.num_batches_tracked]


@needs_kernels
@pytest.mark.parametrize(
    "channels,side,residual",
    [(16, 32, False), (16, 32, True), (24, 5, True), (3, 7, False), (128, 4, True), (100, 3, False)],
)
def test_fused_matches_pytorch(channels, side, residual):
    """Every output and gradient within bf16 rounding of float32 PyTorch, for channel counts that divide the
    kernels' 64-wide blocks and ones that do not, with a mean far from 0 (the statistics must not cancel)."""
    assert fused.kernels() is not None
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(channels)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    x = channels_last(torch.randn(6, channels, side, side) * 3 + 40)
    res = channels_last(torch.randn(6, channels, side, side)) if residual else None
    upstream = torch.randn(6, channels, side, side)
    got = run(copy.deepcopy(bn), x, res, upstream, True)
    expected = run(copy.deepcopy(bn), x, res, upstream, False)
    assert got[0].dtype == torch.bfloat16 and got[0].is_contiguous(memory_format=torch.channels_last)
    names = ["y", "grad x", "grad w", "grad b", "grad residual", "mean", "var", "count"]
    for name, a, b in zip(names, got, expected, strict=True):
        if b is None:
            assert a is None, name
            continue
        scale = b.float().abs().max().item() + 1e-6
        assert (a.float() - b.float()).abs().max().item() <= 8e-3 * scale, name  # bf16: 2^-8 relative


@needs_kernels
def test_resnet_trains_alike_fused_or_not(monkeypatch):
    """Two bf16 training steps of ResNet-20 (channels_last, as the trainer runs it) give the same losses and move
    the weights and running statistics the same way (within bf16 rounding) with the fused layers as with PyTorch's;
    the state-dict keys are those of the network before fusion."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10).to(memory_format=torch.channels_last)
    assert list(model.state_dict())[:7] == [
        "stem.0.weight",
        "stem.1.weight",
        "stem.1.bias",
        "stem.1.running_mean",
        "stem.1.running_var",
        "stem.1.num_batches_tracked",
        "blocks.0.conv1.weight",
    ]
    x = torch.randn(32, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (32,))
    calls = []
    real_apply = fused._BatchNormReLU.apply
    monkeypatch.setattr(fused._BatchNormReLU, "apply", lambda *a: calls.append(1) or real_apply(*a))

    def train(net: nn.Module, use_kernels: bool) -> tuple[list[float], dict]:
        monkeypatch.setattr(fused, "kernels", fused.kernels if use_kernels else lambda: None)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for _ in range(2):
            with torch.autocast("cpu", torch.bfloat16):
                loss = F.cross_entropy(net(x).float(), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses, net.state_dict()

    fused_losses, fused_state = train(copy.deepcopy(model), True)
    assert len(calls) == 2 * 19  # every BatchNorm of ResNet-20, both steps
    plain_losses, plain_state = train(copy.deepcopy(model), False)
    assert len(calls) == 2 * 19
    assert fused_losses == pytest.approx(plain_losses, rel=2e-2)
    start = model.state_dict()
    floats = [k for k, v in start.items() if v.is_floating_point()]
    assert all(torch.equal(fused_state[k], plain_state[k]) for k in start if k not in floats)  # batch counts

    def moved(state: dict) -> torch.Tensor:
        return torch.cat([(state[k] - start[k]).flatten() for k in floats])

    fused_move, plain_move = moved(fused_state), moved(plain_state)
    assert F.cosine_similarity(fused_move, plain_move, dim=0) > 0.99
    assert fused_move.norm().item() == pytest.approx(plain_move.norm().item(), rel=0.05)


def test_unfused_cases_compute_relu_of_batchnorm(monkeypatch):
    """Inference, float32, NCHW memory and synchronised BatchNorm subclasses take PyTorch's layers: exactly
    relu(bn(x) + residual). The fused path is never asked for its kernels there."""
    monkeypatch.setattr(fused, "kernels", lambda: pytest.fail("kernels requested"))
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8)
    x, residual = torch.randn(4, 8, 5, 5), torch.randn(4, 8, 5, 5)
    for case in ("eval", "fp32", "nchw", "subclass"):
        layer = copy.deepcopy(bn)
        inputs = channels_last(x) if case not in ("fp32", "nchw") else x
        if case == "nchw":
            inputs = x.to(torch.bfloat16)
        if case == "eval":
            layer.eval()
        if case == "subclass":
            layer.__class__ = type("SyncedBatchNorm", (nn.BatchNorm2d,), {})
        assert not fused.fuses(layer, inputs, residual)
        expected = F.relu(copy.deepcopy(layer)(inputs) + residual)
        torch.testing.assert_close(fused.batchnorm_relu(layer, inputs, residual), expected)


def test_kernels_that_cannot_build_warn_and_fall_back(monkeypatch):
    """Where the extension cannot be compiled (here: a failing build), a warning names it once and training goes
    on with PyTorch's layers."""
    monkeypatch.setattr(fused, "_kernels", None)

    def failing_build():
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fused, "_build", failing_build)
    with pytest.warns(UserWarning, match="fused BatchNorm\\+ReLU unavailable \\(no C\\+\\+ compiler\\)"):
        assert fused.kernels() is None
    assert fused.kernels() is None  # no second attempt
    bn = nn.BatchNorm2d(4)
    x = channels_last(torch.randn(2, 4, 3, 3))
    assert not fused.fuses(bn, x, None)
    torch.testing.assert_close(fused.batchnorm_relu(bn, x), F.relu(copy.deepcopy(bn)(x)))


def test_kernels_compile_once_then_load_from_the_cache(monkeypatch, tmp_path, capsys):
    """A machine without a build compiles into ~/.cache/imgclf/extensions/NAME, saying so on one line; a build
    already there (no process holding torch's lock on it) is imported without torch's compiler driver."""
    import fcntl

    import torch.utils.cpp_extension

    real = fused.kernels()  # built (or not) in the real cache, before HOME moves
    monkeypatch.setenv("HOME", str(tmp_path))
    name = fused.build_name()
    folder = tmp_path / ".cache" / "imgclf" / "extensions" / name
    calls = []
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda *a, **k: calls.append((a, k)) or "compiled")
    assert fused._build() == "compiled"
    assert "compiling the fused BatchNorm+ReLU kernels" in capsys.readouterr().err
    ((args, options),) = calls
    assert args == (name, [str(fused.SOURCE)]) and options["build_directory"] == str(folder)

    if real is None:
        pytest.skip("no build to copy: the fused kernels need a C++ compiler")
    (folder / f"{name}.so").write_bytes(b"cut short")  # a build killed while linking: built again
    assert fused._build() == "compiled" and len(calls) == 2
    shutil.copy(real.__file__, folder / f"{name}.so")
    with open(folder / "lock", "w") as lock:  # another process building it now: ask torch (which waits for it)
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert fused._build() == "compiled" and len(calls) == 3
    module = fused._build()  # torch's lock file left behind, unheld: nobody building
    assert len(calls) == 3  # imported, not compiled
    assert {"forward", "backward"} <= set(dir(module))
