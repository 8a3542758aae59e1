"""Per-sample augmentation applied to whole batches of uint8 images (no per-image PIL calls).

``fast``: random crop from a 4-pixel reflect-padded image, horizontal flip, optional cutout — on uint8.
``alternating``: airbench's — random crop from a 2-pixel reflect-padded image, and flips that alternate: each image
is mirrored at random in the first epoch and then every other epoch (the loader passes the flips), so a run sees both
sides of every image in every two epochs.
``reference``: the reference study's Keras recipe — rotation ±15°, zoom ±10%, shifts ±10%, horizontal flip —
as one random affine warp per image (``affine_grid``/``grid_sample``, edge pixels repeated like Keras' "nearest").
``trivial``: ``fast``, then TrivialAugment (Müller & Hutter 2021, torchvision's "wide" ranges) — one operation of
14 at a random strength for each image, every image its own (torchvision's transform draws one for a whole batch):
the stronger policy for fine-tuning whole networks.
Every function maps uint8 (B, C, H, W) to float32 in [0, 1] and draws its randomness from ``generator``.
"""

import math

import torch
import torch.nn.functional as F

from imgclf.data.policies import AUGMENTATIONS

TRIVIAL_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color")
TRIVIAL_OPS += ("contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
STRENGTHS = 31  # magnitude bins, as torchvision's TrivialAugmentWide


def random_crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Crop each image at a random offset from its reflect-padded copy (output is channels_last)."""
    b, _, h, w = images.shape
    padded = (
        F.pad(images, (pad, pad, pad, pad), mode="reflect")
        if images.is_floating_point()
        else (F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(images.dtype))
    )
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=generator.device).to(images.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=generator.device).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) → NCHW view, channels_last strides


def mirror(images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """The images with those where ``which`` is True mirrored left to right."""
    return torch.where(which.view(-1, 1, 1, 1), images.flip(3), images)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left to right."""
    return mirror(images, torch.rand(len(images), generator=generator, device=generator.device).to(images.device) < 0.5)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one random ``size``×``size`` square per image (DeVries & Taylor 2017)."""
    b, _, h, w = images.shape
    cy = torch.randint(0, h, (b, 1, 1), generator=generator, device=generator.device).to(images.device)
    cx = torch.randint(0, w, (b, 1, 1), generator=generator, device=generator.device).to(images.device)
    ys = torch.arange(h, device=images.device)[None, :, None]
    xs = torch.arange(w, device=images.device)[None, None, :]
    hole = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)
    return images * ~hole[:, None]


def random_affine(images: torch.Tensor, generator: torch.Generator, rotation=15.0, zoom=0.1, shift=0.1) -> torch.Tensor:
    """Warp each float image by its own random rotation, zoom and shift, repeating edge pixels."""
    b = len(images)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator, device=generator.device) * (hi - lo) + lo).to(images.device)

    angle = uniform(-rotation, rotation) * math.pi / 180
    scale = uniform(1 - zoom, 1 + zoom)  # sampling-grid scale: >1 zooms out, <1 zooms in
    tx, ty = uniform(-2 * shift, 2 * shift), uniform(-2 * shift, 2 * shift)  # grid units span [-1, 1]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def grey(images: torch.Tensor) -> torch.Tensor:
    """Luma of float (B, 3, H, W) images, (B, 1, H, W)."""
    return (images * images.new_tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


def blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``other + factor·(images − other)`` per image, clamped to [0, 1] (PIL's ImageEnhance)."""
    return (other + factor.view(-1, 1, 1, 1) * (images - other)).clamp_(0, 1)


def smoothed(images: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter inside, the border pixels kept: what sharpness blends away from."""
    kernel = images.new_tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]]).div_(13).expand(images.shape[1], 1, 3, 3)
    out = images.clone()
    out[..., 1:-1, 1:-1] = F.conv2d(images, kernel, groups=images.shape[1])
    return out


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device``, copied from pinned memory without waiting for the GPU's queue."""
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor.to(device)


def trivial_augment(images: torch.Tensor, host_generator: torch.Generator) -> torch.Tensor:
    """One TrivialAugment operation per float image in [0, 1], each at its own random strength and sign.

    The draws come from a CPU generator: the images are sorted by operation on the host, so each operation takes a
    slice whose bounds are known there, and a GPU is never asked how many images an operation got (a sync)."""
    b = len(images)
    ops = torch.randint(0, len(TRIVIAL_OPS), (b,), generator=host_generator)
    strength = torch.randint(0, STRENGTHS, (b,), generator=host_generator).float() / (STRENGTHS - 1)
    sign = torch.randint(0, 2, (b,), generator=host_generator).float() * 2 - 1
    order = torch.argsort(ops, stable=True)
    counts = torch.bincount(ops, minlength=len(TRIVIAL_OPS)).tolist()
    params = to_device(torch.stack([strength, strength * sign])[:, order], images.device)
    order = to_device(order, images.device)
    grouped = images[order]
    start = counts[0]  # the identity's images stay as they are
    for name, count in zip(TRIVIAL_OPS[1:], counts[1:], strict=True):
        if count:
            part = slice(start, start + count)
            grouped[part] = trivial_op(name, grouped[part], params[0, part], params[1, part])
        start += count
    out = torch.empty_like(images)
    out[order] = grouped
    return out


def trivial_op(name: str, x: torch.Tensor, strength: torch.Tensor, signed: torch.Tensor) -> torch.Tensor:
    """TrivialAugment's operation ``name`` on float images ``x`` at per-image ``strength`` in [0, 1]."""
    if name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate"):
        theta = torch.eye(2, 3, device=x.device).repeat(len(x), 1, 1)
        if name == "rotate":  # up to 135°
            angle = signed * (135 * math.pi / 180)
            theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
            theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle), torch.cos(angle)
        elif name.startswith("shear"):  # up to 0.99
            row, column = (0, 1) if name == "shear_x" else (1, 0)
            theta[:, row, column] = signed * 0.99
        else:  # up to 32 px of a 224-px image: a seventh of the side
            theta[:, 0 if name == "translate_x" else 1, 2] = signed * 2 * 32 / 224
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if name == "brightness":
        return blend(x, torch.zeros_like(x), 1 + signed * 0.99)
    if name == "color":
        return blend(x, grey(x).expand_as(x), 1 + signed * 0.99)
    if name == "contrast":
        return blend(x, grey(x).mean((1, 2, 3), keepdim=True).expand_as(x), 1 + signed * 0.99)
    if name == "sharpness":
        return blend(x, smoothed(x), 1 + signed * 0.99)
    if name == "posterize":  # keep 8 down to 2 bits
        drop = 2.0 ** (6 * strength).round().view(-1, 1, 1, 1)
        return torch.floor(x * 255 / drop) * drop / 255
    if name == "solarize":  # invert the pixels above a threshold from 1 down to 0
        threshold = (1 - strength).view(-1, 1, 1, 1)
        return torch.where(x >= threshold, 1 - x, x)
    as_bytes = (x * 255).round_().to(torch.uint8)
    from torchvision.transforms.v2 import functional as TF  # here: importing torchvision takes seconds, serve spares

    adjusted = TF.autocontrast(as_bytes) if name == "autocontrast" else TF.equalize(as_bytes)
    return adjusted.float() / 255


def augment_batch(
    images: torch.Tensor,
    kind: str,
    generator: torch.Generator,
    cutout_size: int = 0,
    host_generator: torch.Generator | None = None,
    flips: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply augmentation ``kind`` to a uint8 batch and return float32 images in [0, 1] (draws from ``generator``, on
    the images' device, and for ``trivial`` from the CPU's ``host_generator``, by default ``generator``; for
    ``alternating``, ``flips`` says which images to mirror)."""
    if kind == "alternating":
        if flips is None:
            raise ValueError("alternating flips need the loader's flips")
        out = mirror(random_crop(images, 2, generator), flips).float().div_(255)
    elif kind == "fast":
        out = random_flip(random_crop(images, 4, generator), generator)
        out = out.float().div_(255)
    elif kind == "trivial":
        out = random_flip(random_crop(images, 4, generator), generator)
        out = trivial_augment(out.float().div_(255), host_generator or generator)
    elif kind == "reference":
        out = random_affine(images.float().div_(255), generator)
        out = random_flip(out, generator)
    elif kind == "none":
        out = images.float().div_(255)
    else:
        raise ValueError(f"unknown augmentation '{kind}' (available: {', '.join(AUGMENTATIONS)})")
    if cutout_size:
        out = cutout(out, cutout_size, generator)
    return out
