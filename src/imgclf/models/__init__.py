"""Model zoo: every network is built by name through :func:`create_model`."""

from collections.abc import Callable

from torch import nn

from imgclf.core.errors import ImgclfError
from imgclf.models.resnet import CifarResNet
from imgclf.models.simple_cnn import SimpleCNN
from imgclf.models.speed import SpeedNet
from imgclf.models.vgg import VGG10

MODELS: dict[str, Callable[..., nn.Module]] = {
    "simple_cnn": SimpleCNN,
    "vgg10": VGG10,
    "resnet20": lambda **kw: CifarResNet(20, **kw),
    "resnet56": lambda **kw: CifarResNet(56, **kw),
    "resnet110": lambda **kw: CifarResNet(110, **kw),
    "speed94": SpeedNet,
}


def create_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build the network registered under ``name``."""
    if name not in MODELS:
        raise ImgclfError(f"unknown model '{name}' (available: {', '.join(MODELS)})")
    return MODELS[name](num_classes=num_classes)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
