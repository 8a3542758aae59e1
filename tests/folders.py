"""Image folders made by the tests: good images of varied sizes, formats and modes, and every kind of bad file."""

import io
from pathlib import Path

import numpy as np
from PIL import Image

# bad file name → the reason preparation must give for skipping it
BAD_FILES = {
    "empty.jpg": "empty file",
    "truncated.jpg": "truncated",
    "text.png": "not an image",
    "garbage.jpg": "not an image",
    "bomb.png": "decompression bomb",
    "broken.png": "undecodable",
}


def class_colour(index: int) -> tuple[int, int, int]:
    """A colour per class, so that a tiny network can tell them apart."""
    return [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 30)][index % 4]


def good_image(rng: np.random.Generator, index: int, i: int) -> Image.Image:
    """A noisy image in its class colour, of a random size between 24 and 90 px."""
    w, h = (int(v) for v in rng.integers(24, 90, 2))
    pixels = np.clip(np.array(class_colour(index)) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def write_images(folder: Path, index: int, count: int, rng: np.random.Generator, prefix: str = "") -> list[Path]:
    """``count`` good images of class ``index`` in ``folder``, JPEG and PNG alternating."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{i:03d}.{'jpg' if i % 2 else 'png'}"
        good_image(rng, index, i).save(path)
        paths.append(path)
    return paths


def write_bad_files(folder: Path, rng: np.random.Generator) -> None:
    """One of each file in :data:`BAD_FILES`, plus files that must be ignored (hidden, not an image)."""
    jpeg = io.BytesIO()
    good_image(rng, 0, 0).save(jpeg, "JPEG")
    png = io.BytesIO()
    good_image(rng, 0, 0).save(png, "PNG")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / "text.png").write_text("this is not an image\n")
    (folder / "garbage.jpg").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    Image.new("1", (20_000, 20_000)).save(folder / "bomb.png")  # 400 M pixels: over twice Pillow's limit
    data = bytearray(png.getvalue())
    data[60:200] = bytes(140)  # a valid header, damaged image data
    (folder / "broken.png").write_bytes(bytes(data))
    (folder / ".DS_Store").write_bytes(b"\x00\x01hidden")
    (folder / "notes.txt").write_text("not an image extension: ignored\n")


def write_messy_images(folder: Path, index: int) -> list[str]:
    """Readable images in the modes users' folders contain; returns their names."""
    colour = class_colour(index)
    rgb = Image.new("RGB", (40, 30), colour)
    rgb.convert("L").save(folder / "gray.png")
    rgba = Image.new("RGBA", (30, 40), (*colour, 255))
    rgba.save(folder / "rgba.png")
    rgb.convert("P").save(folder / "palette.gif")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    sixteen = np.full((32, 32), 60_000, dtype=np.uint16)
    Image.fromarray(sixteen).save(folder / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    rgb.save(folder / "rotated.jpg", exif=exif)
    return ["gray.png", "rgba.png", "palette.gif", "cmyk.jpg", "sixteen.png", "rotated.jpg"]


def make_folder(root: Path, classes: list[str], per_class: int, seed: int = 0, bad: bool = False) -> Path:
    """DIR/<class>/… with ``per_class`` good images per class (and, with ``bad``, the bad and messy files)."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(classes):
        write_images(root / name, index, per_class, rng)
    if bad:
        write_bad_files(root / classes[0], rng)
        write_messy_images(root / classes[1], 1)
    return root


def make_split_folder(root: Path, classes: list[str], per_class: dict[str, int], seed: int = 0) -> Path:
    """DIR/<split>/<class>/… with ``per_class[split]`` images per class in each split folder."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for index, name in enumerate(classes):
            write_images(root / split / name, index, count, rng, prefix=f"{split}-")
    return root
