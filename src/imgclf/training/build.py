"""What a phase trains on and with: image loaders from a run's splits, and a network built from scratch."""

import torch
from torch import nn

from imgclf.config.options import TrainConfig
from imgclf.core.errors import ImgclfError
from imgclf.data.features import resize_normalise
from imgclf.data.images import ImageSet, Splits
from imgclf.data.loader import BatchLoader, inference_batch_size
from imgclf.models.transfer import architecture, build_network


def scratch_model(cfg: TrainConfig, splits: Splits, device: torch.device) -> nn.Module:
    """``cfg.model`` for ``splits``' classes on ``device``: checked against its smallest progressive side, and
    initialised from the training images where the network asks (e.g. SpeedNet's whitening filters)."""
    model = build_network(architecture(cfg), len(splits.classes)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.progressive_size:
        check_input_size(model, cfg.model, cfg.progressive_size, device)
    if hasattr(model, "init_from_data"):  # e.g. whitening filters from the training images' patches
        images = first_images(splits.train, splits.mean, splits.std, model.init_images)
        model.init_from_data(images.to(device))
    return model


def check_input_size(model: nn.Module, name: str, size: int, device: torch.device) -> None:
    """Raise a one-line error when ``model`` cannot take ``size``×``size`` inputs (e.g. a Flatten head)."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, 3, size, size, device=device))
    except RuntimeError:
        raise ImgclfError(f"model '{name}' cannot take {size}×{size} inputs (progressive resizing)") from None


def image_loaders(
    cfg: TrainConfig,
    train: ImageSet,
    val: ImageSet,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    image_size: int = 0,
) -> tuple[BatchLoader, BatchLoader | None]:
    """Shuffled, augmented training batches and plain validation batches (resized to ``image_size`` if set)."""
    common = dict(mean=mean, std=std, device=device, channels_last=cfg.channels_last, image_size=image_size)
    train_loader = BatchLoader(
        train,
        cfg.batch_size,
        augment=cfg.augment,
        cutout=cfg.cutout,
        shuffle=True,
        drop_last=len(train) >= 2 * cfg.batch_size,
        seed=cfg.seed,
        **common,
    )
    side = image_size or val.images.shape[-1]
    return train_loader, BatchLoader(val, inference_batch_size(side, device), **common) if len(val) else None


def first_images(data: ImageSet, mean: tuple[float, ...], std: tuple[float, ...], count: int) -> torch.Tensor:
    """The first ``count`` images of ``data``, normalised as training normalises them (float32, unaugmented)."""
    return resize_normalise(data.images[torch.arange(min(count, len(data)))], 0, mean, std)
