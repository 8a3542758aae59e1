"""Altered copies by their pixels: whether two images are one picture resized, re-encoded, shifted, brightened or
mirrored.

A frozen backbone's embedding says what an image shows, so two photos of one scene lie about as close as an image
and its altered copy, and on small images a JPEG re-save moves the embedding as far as an unrelated image's. A copy
keeps its pixels' layout instead: each image becomes a blurred grey thumbnail of :data:`SIDE` px
(:func:`thumbnails`); a pair's distance is that of the two thumbnails at their best alignment — the first one's
centre (:data:`MARGIN` px in from the edges) against the second's windows shifted up to :data:`SHIFT` px each way,
mirrored or not, each standardised, so brightness and contrast drop out (:func:`aligned_distances`). The pairs
worth aligning are each image's nearest neighbours by a coarse sketch of its thumbnail, mirrored or not
(:func:`candidate_pairs`), and by its embedding.

Measured on CIFAR-10's 60,000 images with 500 copies altered as benchmarks/audit_leaks.py plants them: the copies
lay a median 0.039 from their originals (95% within 0.092) against 0.13 for the nearest unrelated image; centre
margins of 2 px instead of 4 let a shifted copy's filled edge in (95% within 0.153). The smallest cross-split
distances in CIFAR-10 itself are its real near-duplicates (the same photo, recoloured or recropped).

Assumes uint8 (N, 3, H, W) images of any side: thumbnails are resized (antialiased) to :data:`SIDE`, so the shifts cover
6% of the side (2 px of a 32-px image) whatever its size.
"""

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.analysis.neighbours import nearest_among, nearest_neighbours, neighbour_pairs

SIDE = 32  # thumbnail side, px
SHIFT = 2  # alignments tried: every shift of up to SHIFT px in each direction, mirrored or not
MARGIN = 4  # px of the first thumbnail's border left out: a shifted copy's filled edge and its blur stay out
SKETCH = 8  # side of the coarse sketch the candidates are searched by
CHUNK = 2048  # images (or pairs) per block
EXACT = 1e-2  # aligned thumbnails closer than this are one picture (float16 thumbnails round a little)
LUMA = (0.299, 0.587, 0.114)
BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)  # a 5-tap Gaussian: JPEG blocks and resampling fade, the layout stays


def thumbnails(images, chunk: int = CHUNK) -> torch.Tensor:
    """(N, SIDE, SIDE) float16 blurred grey thumbnails of uint8 (N, 3, H, W) ``images`` (any sliceable, read
    ``chunk`` at a time)."""
    taps = torch.tensor(BINOMIAL)
    kernel = (taps[:, None] * taps[None]).div_(taps.sum() ** 2).view(1, 1, 5, 5)
    luma = torch.tensor(LUMA).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(np.asarray(images[start : start + chunk]).astype(np.float32))
        grey = (x * luma).sum(1, keepdim=True)
        if grey.shape[-2:] != (SIDE, SIDE):
            grey = F.interpolate(grey, size=(SIDE, SIDE), mode="bilinear", antialias=True, align_corners=False)
        out.append(F.conv2d(F.pad(grey, (2, 2, 2, 2), mode="replicate"), kernel)[:, 0].half())
    return torch.cat(out) if out else torch.empty(0, SIDE, SIDE, dtype=torch.half)


def standardised(rows: torch.Tensor) -> torch.Tensor:
    """Each row of pixels less its mean, scaled to unit length (brightness and contrast removed)."""
    rows = rows.float()
    return F.normalize(rows - rows.mean(-1, keepdim=True), dim=-1)


def sketches(thumbs: torch.Tensor) -> np.ndarray:
    """(2N, SKETCH²) float32 coarse sketches: rows 0…N−1 of the thumbnails, rows N…2N−1 of their mirror images."""
    both = torch.cat([thumbs, thumbs.flip(-1)]).float()[:, None]
    return standardised(F.adaptive_avg_pool2d(both, SKETCH).flatten(1)).numpy()


def candidate_pairs(sketched: np.ndarray, k: int, progress: bool = True) -> np.ndarray:
    """(P, 2) unique pairs (a < b) of images among each other's ``k`` nearest by their :func:`sketches`
    ``sketched``, either way round."""
    n = len(sketched) // 2
    if n < 2:
        return np.empty((0, 2), np.int64)
    _, indices = nearest_neighbours(sketched, min(k, 2 * n - 2), progress)
    return neighbour_pairs(indices, n)


def nearest_thumbnails(queries: torch.Tensor, sketched: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) indices of the images nearest to each thumbnail of ``queries`` by sketch, mirrored or not
    (``sketched``: the images' :func:`sketches`)."""
    n = len(sketched) // 2
    _, indices = nearest_among(sketches(queries)[: len(queries)], sketched, min(k, 2 * n))
    return indices % n


def aligned_distances(first: torch.Tensor, second: torch.Tensor, chunk: int = CHUNK) -> np.ndarray:
    """Distance between thumbnails ``first[i]`` and ``second[i]`` at their best alignment, for each i: the
    Euclidean distance of the standardised pixels (0 for copies, about √2 for unrelated images).

    ``first[i]``'s centre, standardised, is correlated with every window of ``second[i]`` and of its mirror image
    by a grouped convolution, and each window's mean and norm come from box filters: on this 2-core CPU 9× faster
    than cutting the 50 windows out (20,000 pairs: 0.47 s against 4.2 s), the same distances to 1e-4."""
    inner, reach = SIDE - 2 * MARGIN, slice(MARGIN - SHIFT, SIDE - MARGIN + SHIFT)
    out = np.empty(len(first), np.float32)
    for start in range(0, len(first), chunk):
        part = slice(start, start + chunk)
        centre = standardised(first[part, MARGIN:-MARGIN, MARGIN:-MARGIN].flatten(1)).view(-1, 1, inner, inner)
        best = torch.full((len(centre),), -1.0)
        second_part = second[part].float()
        for view in (second_part[:, reach, reach], second_part.flip(-1)[:, reach, reach]):
            dots = F.conv2d(view[None], centre, groups=len(centre))[0]  # (P, shifts, shifts): Σ centre · window
            mean = F.avg_pool2d(view[:, None], inner, stride=1)[:, 0]
            square = F.avg_pool2d(view[:, None] ** 2, inner, stride=1)[:, 0]
            norm = ((square - mean**2) * inner**2).clamp_(min=1e-6).sqrt_()  # ‖window − its mean‖
            best = torch.maximum(best, (dots / norm).flatten(1).amax(1))
        out[part] = torch.sqrt((2 - 2 * best).clamp_(min=0)).numpy()
    return out


def pair_distances(first: torch.Tensor, second: torch.Tensor, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`aligned_distances` of thumbnails ``first[a]`` and ``second[b]`` (index arrays of one shape, which
    the result takes), a block at a time."""
    flat_a, flat_b = torch.from_numpy(np.ravel(a)), torch.from_numpy(np.ravel(b))
    out = np.empty(len(flat_a), np.float32)
    for start in range(0, len(out), CHUNK):
        part = slice(start, start + CHUNK)
        out[part] = aligned_distances(first[flat_a[part]], second[flat_b[part]])
    return out.reshape(np.shape(a))
