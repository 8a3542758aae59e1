"""Batches of an :class:`ImageSet` — in memory (moved to the device once) or memory-mapped on disk (each batch
gathered from the file) — with seeded shuffling, batch augmentation and normalisation."""

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from imgclf.core.errors import ImgclfError
from imgclf.data.augment import augment_batch, random_crop
from imgclf.data.images import ImageSet, MappedImages


def inference_batch_size(side: int, device: torch.device | str = "cpu") -> int:
    """Images per inference batch, fewer for larger images so that memory does not grow with the side as fast as the
    activations do: on a GPU 1,024 at 32 px down to 256; on a CPU, where batches that fit its caches run fastest
    (ResNet-20 1.4× faster at 256 than at 1,024: benchmarks/results/inference.json), 256 at 32 px down to 16."""
    area = max(side * side, 1)
    if torch.device(device).type == "cpu":
        return max(16, min(256, 256 * 32 * 32 // area))
    return max(256, min(1024, 1024 * 32 * 32 // area))


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s randomness (order, augmentation, dropout) in a run seeded with ``seed``."""
    return seed * 1_000_003 + epoch


def alternating_flips(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Which of ``n`` images epoch ``epoch`` mirrors under alternating flips: a random half drawn once per run (from
    ``seed``), the other half in odd epochs."""
    first = torch.rand(n, generator=torch.Generator().manual_seed(seed)) < 0.5
    return first ^ bool(epoch % 2)


class SeededBatches:
    """Batches of ``labels``-many samples whose order (and augmentation) derive from (seed, epoch) only.

    Under torchrun each of ``world_size`` processes takes its shard of the epoch's order: every ``world_size``-th
    sample from its ``rank``, the same count on every rank (the last ``n % world_size`` samples of the order sit the
    epoch out, as with DistributedSampler's drop_last), so rank r's i-th batch and the other ranks' i-th batches
    together hold the samples a single process would take in one batch of ``batch_size × world_size``.
    """

    labels: torch.Tensor
    batch_size: int
    drop_last: bool
    seed: int
    epoch: int = 0
    rank: int = 0
    world_size: int = 1
    even: bool = True  # every rank takes the same number of samples (training: the ranks step together)
    sample_weights: torch.Tensor | None = None  # a shuffle draws with replacement by these weights (class balance)

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling and augmentation randomness of ``epoch``."""
        self.epoch = epoch

    def set_shard(self, rank: int, world_size: int, even: bool = True) -> None:
        """Take rank ``rank``'s shard of every epoch among ``world_size`` processes; with ``even`` False the shards
        cover every sample, some ranks holding one more (validation: the ranks' sums make the whole split's)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.rank, self.world_size, self.even = rank, world_size, even

    def samples(self) -> int:
        """The samples this rank takes per epoch."""
        n = len(self.labels)
        return n // self.world_size if self.even else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self.samples()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """The random generator of the current epoch (the same on every rank: it draws the epoch's order)."""
        return torch.Generator(device).manual_seed(epoch_seed(self.seed, self.epoch))

    def shuffled(self, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        """The epoch's order of the samples: a permutation, or with ``sample_weights`` as many draws with replacement
        (a class-balanced epoch of the same length)."""
        n = len(self.labels)
        if self.sample_weights is None:
            return torch.randperm(n, generator=generator, device=device)
        weights = self.sample_weights.to(generator.device)
        return torch.multinomial(weights, n, replacement=True, generator=generator).to(device)

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of the epoch's ``order`` (all of it for a single process)."""
        if self.world_size == 1:
            return order
        return order[self.rank :: self.world_size][: self.samples()]

    def rank_generator(self, generator: torch.Generator) -> torch.Generator:
        """The generator of this rank's augmentation: the epoch's own for a single process (so its runs stay as they
        were), a stream of the rank's own under torchrun (ranks would otherwise draw the same crops and flips)."""
        if self.world_size == 1:
            return generator
        seed = epoch_seed(self.seed, self.epoch) * 1_009 + self.rank + 1
        return torch.Generator(generator.device).manual_seed(seed)


class BatchLoader(SeededBatches):
    """Iterate (images, labels) batches; epoch ``e`` of seed ``s`` always yields the same batches."""

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: str = "none",
        cutout: int = 0,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = True,
        image_size: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.images = data.images if isinstance(data.images, MappedImages) else data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size, self.augment, self.cutout = batch_size, augment, cutout
        self.shuffle, self.drop_last, self.seed, self.epoch = shuffle, drop_last, seed, 0
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.image_size = image_size  # 0: native resolution; otherwise batches are resized (antialiased) to this side

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # the order lives where the images are: on the device, or on the CPU for images read from disk
        where = torch.device("cpu") if isinstance(self.images, MappedImages) else self.device
        generator = self.generator(where)
        n = len(self.labels)
        order = self.shuffled(generator, where) if self.shuffle else None
        if self.world_size > 1:
            order = self.shard(order if order is not None else torch.arange(n, device=where))
            generator = self.rank_generator(generator)
        # TrivialAugment draws on the host (so the GPU is never waited for): from this CPU generator
        host = generator if where.type == "cpu" else torch.Generator().manual_seed(generator.initial_seed())
        labels = self.labels.to(where)
        flips = alternating_flips(n, self.seed, self.epoch).to(where) if self.augment == "alternating" else None
        for i in range(len(self)):
            idx = slice(i * self.batch_size, (i + 1) * self.batch_size)
            if order is not None:
                idx = order[idx]
            images = self.images[idx].to(self.device, non_blocking=True)
            flip = flips[idx].to(self.device, non_blocking=True) if flips is not None else None
            images = augment_batch(images, self.augment, generator, self.cutout, host_generator=host, flips=flip)
            if self.image_size and self.image_size != images.shape[-1]:
                size = (self.image_size, self.image_size)
                images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
            images = ((images - self.mean) / self.std).contiguous(memory_format=self.memory_format)
            yield images, labels[idx].to(self.device, non_blocking=True)


class ActivationLoader(SeededBatches):
    """Iterate (activations, labels) batches of cached backbone activations; with ``mirrored`` given, each sample of
    each epoch is drawn from the original or the mirrored image's activations at random (flip augmentation); with
    ``shift``, each activation map is cropped at a random offset from its reflect-padded copy (translation)."""

    def __init__(
        self,
        activations: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mirrored: torch.Tensor | None = None,
        shift: int = 0,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = True,
    ) -> None:
        self.activations, self.mirrored, self.labels, self.shift = activations, mirrored, labels, shift
        if shift and (activations.ndim != 4 or shift >= min(activations.shape[-2:])):
            raise ImgclfError(
                f"feature_shift {shift} needs activation maps larger than {shift}, got shape {tuple(activations.shape)}"
            )
        self.batch_size, self.shuffle, self.drop_last, self.seed, self.epoch = batch_size, shuffle, drop_last, seed, 0
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last and activations.ndim == 4 else torch.contiguous_format

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = self.generator()
        n = len(self.labels)
        order = self.shuffled(generator) if self.shuffle else torch.arange(n)
        flips = torch.rand(n, generator=generator) < 0.5 if self.mirrored is not None else None
        order, generator = self.shard(order), self.rank_generator(generator)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            batch = self.activations[idx]
            if flips is not None:
                use = flips[idx]
                batch[use] = self.mirrored[idx[use]]
            batch = batch.to(self.device, torch.float32, non_blocking=True)
            if self.shift:
                batch = random_crop(batch, self.shift, generator)
            batch = batch.contiguous(memory_format=self.memory_format)
            yield batch, self.labels[idx].to(self.device)
