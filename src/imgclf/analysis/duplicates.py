"""Near duplicates: pairs of images whose embeddings lie closer than the calibration allows, and exact copies by
their pixels. A pair across splits is a leak.

The threshold is calibrated on the dataset itself: a seeded sample of its images is altered (:func:`alter`: each of
resized by ±25%, brightness ±15%, JPEG quality 50–70, shifted 1–2 px, mirrored, with probability ½) and embedded.
The threshold is the :data:`COPY_QUANTILE` quantile of the distances between the images and their copies — but never
more than the distance at which any copy came to an image other than its original (its nearest impostor): false
pairs are kept rarer than one per calibration image. Where copies land farther from their originals than unrelated
images lie from each other (JPEG at quality 50 on a 32-px image does that to an ImageNet backbone's features) the
threshold stays tight and the expected recall, reported with it, is low.
"""

import hashlib
import io

import numpy as np
from PIL import Image, ImageEnhance

CALIBRATION_IMAGES = 500
COPY_QUANTILE = 0.95
EXACT = 1e-3  # embeddings closer than this are the same image (or its mirror image)


EDITS = ("resize", "brightness", "jpeg", "shift", "mirror")


def alter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of uint8 (3, H, W) ``image`` as re-publishing alters one: each of :data:`EDITS` with probability ½ (at
    least one) — resized by a random 75–125% (then back to H × W), brightness ×0.85–1.15, re-encoded as JPEG at
    quality 50–70, shifted 1–2 px, mirrored."""
    chosen = [e for e in EDITS if rng.random() < 0.5] or [EDITS[int(rng.integers(len(EDITS)))]]
    pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
    h, w = image.shape[1:]
    if "resize" in chosen:
        scale = rng.uniform(0.75, 1.25)
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        pil = pil.resize(size, Image.BICUBIC).resize((w, h), Image.BICUBIC)
    if "brightness" in chosen:
        pil = ImageEnhance.Brightness(pil).enhance(rng.uniform(0.85, 1.15))
    if "jpeg" in chosen:
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=int(rng.integers(50, 71)))
        pil = Image.open(buffer).convert("RGB")
    out = np.asarray(pil).transpose(2, 0, 1)
    if "shift" in chosen:
        dy, dx = (int(rng.integers(1, 3) * rng.choice([-1, 1])) for _ in range(2))
        out = np.pad(out, ((0, 0), (2, 2), (2, 2)), mode="edge")[:, 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w]
    return np.ascontiguousarray(out[:, :, ::-1] if "mirror" in chosen else out)


def copy_distances(originals: np.ndarray, copies: np.ndarray) -> np.ndarray:
    """Distance between each original's embedding and its altered copy's, row by row."""
    return np.linalg.norm(originals - copies, axis=1)


def impostor_distances(copies: np.ndarray, emb: np.ndarray, originals: np.ndarray, block: int = 50_000) -> np.ndarray:
    """Distance from each copy's unit embedding to the nearest row of unit embeddings ``emb`` other than its
    original (``originals``: each copy's row), in blocks of ``block`` rows."""
    nearest = np.full(len(copies), np.inf)
    for start in range(0, len(emb), block):
        part = np.sqrt(np.maximum(2 - 2 * copies @ emb[start : start + block].T, 0))
        mine = (originals >= start) & (originals < start + block)
        part[np.flatnonzero(mine), originals[mine] - start] = np.inf
        part[part < EXACT] = np.inf  # the original's exact or mirrored copies elsewhere in the data are no impostors
        nearest = np.minimum(nearest, part.min(1))
    return nearest


def threshold_from(copy: np.ndarray, impostor: np.ndarray, quantile: float = COPY_QUANTILE) -> float:
    """The near-duplicate threshold: the ``quantile`` of the image-to-copy distances ``copy``, at most the smallest
    distance from a copy to an unrelated image (``impostor``)."""
    return float(min(np.quantile(copy, quantile), impostor.min()))


def pixel_digests(images, chunk: int = 1024) -> list[str]:
    """SHA-1 of each uint8 (3, H, W) image's pixels (``images``: sliceable into uint8 tensors, read ``chunk`` at a
    time): equal for exact copies."""
    digests = []
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk])
        digests += [hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest() for x in block]
    return digests


def near_pairs(
    distances: np.ndarray, indices: np.ndarray, threshold: float, splits: np.ndarray, exact: np.ndarray
) -> list[dict]:
    """Each pair of images within ``threshold`` of each other once, from the neighbour lists (``distances``,
    ``indices``, nearest first): leaks (across ``splits``) first, then by distance. ``exact``: a group id per image,
    equal for exact copies (their pair counts as exact whatever its distance)."""
    pairs = {}
    for i, j in zip(*np.nonzero((distances <= threshold) | (exact[indices] == exact[:, None])), strict=True):
        a, b = sorted((i, int(indices[i, j])))
        if a != b:
            pairs[a, b] = float(distances[i, j])
    rows = [
        {"a": a, "b": b, "distance": d, "leak": bool(splits[a] != splits[b]), "exact": bool(exact[a] == exact[b])}
        for (a, b), d in pairs.items()
    ]
    return sorted(rows, key=lambda r: (not r["leak"], not r["exact"], r["distance"]))


def exact_groups(digests: list[str]) -> np.ndarray:
    """A group id per image: the index of the first image with the same digest."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(d, i) for i, d in enumerate(digests)], dtype=np.int64)
