"""A timm backbone with a new head, split into a frozen prefix and a trainable tail: what transfer learning trains,
and what inference rebuilds to predict (with the prefix's activations cached on disk, as in training)."""

import dataclasses
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Protocol

import torch
from torch import nn

from imgclf.data.features import ActivationCache
from imgclf.models import MODELS, create_model
from imgclf.models.backbones import FeatureTail, create_backbone, preprocessing, split_backbone


class TransferOptions(Protocol):
    """The options a transfer network is built and cached with (a training config has them all)."""

    model: str
    pretrained: bool
    weights: str | None
    dropout: float
    drop_path: float
    unfreeze: str
    img_size: int
    cache: bool
    cache_dir: str | None
    compile: bool
    progress: bool
    threads: int


@dataclasses.dataclass
class TransferModel:
    """A timm network and its split into a frozen prefix and a trainable tail (sharing the network's modules)."""

    network: nn.Module
    prefix: nn.Sequential
    tail: FeatureTail
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def build_transfer_model(options: TransferOptions, num_classes: int, pretrained: bool = True) -> TransferModel:
    """The backbone of ``options`` with a new head, split where ``options.unfreeze`` says (``pretrained=False``:
    random weights, for a run's own weights to be loaded into)."""
    network = create_backbone(
        options.model,
        num_classes,
        pretrained=pretrained and options.pretrained,
        weights=options.weights if pretrained else None,
        dropout=options.dropout,
        drop_path=options.drop_path,
    )
    prep = preprocessing(network)
    if options.unfreeze == "all":
        prefix, tail = nn.Sequential(), None
    else:
        prefix, tail = split_backbone(network, options.unfreeze)
        for block in prefix.modules():  # the frozen prefix computes fixed features: no stochastic depth there,
            if isinstance(getattr(block, "drop_path", None), nn.Module):  # so its cached activations stay valid
                block.drop_path = nn.Identity()
    return TransferModel(network, prefix, tail, options.img_size or prep.native_size, prep.mean, prep.std)


BUILD_OPTIONS = ("dropout", "drop_path", "unfreeze", "img_size")  # what a timm network is built with, beside its name


def architecture(options: TransferOptions) -> dict:
    """The network ``options`` train, as a model card names it: its name, and for a timm backbone the options it is
    built with (the rest of the training config is not needed to rebuild it)."""
    if options.model in MODELS:
        return {"name": options.model}
    return {"name": options.model, **{key: getattr(options, key) for key in BUILD_OPTIONS}}


def build_network(
    arch: Mapping, num_classes: int, pretrained: bool = False, weights: str | None = None
) -> nn.Module | TransferModel:
    """The one factory of networks: the one ``arch`` names (see :func:`architecture`) with ``num_classes`` outputs —
    a network from scratch, or a timm backbone split for transfer, starting from ImageNet weights when ``pretrained``
    (or from a ``weights`` file) and otherwise from random ones, for a run's own weights to go into."""
    if arch["name"] in MODELS:
        return create_model(arch["name"], num_classes=num_classes)
    built = {key: arch[key] for key in BUILD_OPTIONS}
    options = SimpleNamespace(model=arch["name"], pretrained=pretrained, weights=weights, **built)
    return build_transfer_model(options, num_classes)


def uses_cache(options: TransferOptions, tm: TransferModel) -> bool:
    """True when a run trains and predicts through cached prefix activations (there is a frozen prefix to cache)."""
    return options.cache and tm.tail is not None and len(tm.prefix) > 0


def activation_cache(
    options: TransferOptions, tm: TransferModel, device: torch.device, precision: str
) -> ActivationCache:
    """The on-disk cache of ``tm.prefix`` activations for ``options``."""
    return ActivationCache(
        options.cache_dir,
        tm.prefix,
        tm.image_size,
        tm.mean,
        tm.std,
        device,
        precision,
        compile=options.compile,
        progress=options.progress,
        threads=options.threads,
    )
