"""What `imgclf train` does when it is not told: the choices a careful practitioner would make, each said in a line.

- No model (or ``--model auto``): transfer learning from the best ImageNet backbone whose weights are installed, at a
  side suited to the images (measured from the files), with that family's recipe; ResNet-20 from scratch when no
  backbone is installed.
- A timm model without a recipe: the fine-tuning defaults of ``configs/finetune.yaml`` (ImageNet weights, a head
  phase, AdamW at 3e-4), never the from-scratch SGD rate of 0.2.
"""

from imgclf.config.files import FINETUNE, load_config_file
from imgclf.data.files import typical_side
from imgclf.data.labelfile import LabelFormat
from imgclf.data.sources import is_builtin
from imgclf.models import MODELS
from imgclf.models.backbones import best_installed_backbone

AUTO = "auto"
FALLBACK = "resnet20"  # no backbone installed: the best network from scratch
BUILTIN_SIDE = 32  # CIFAR's images
# a backbone sees small images enlarged 3.5×: on the CIFAR-10 JPEG folder (32 px) Lite2 at 96 px gave 93.65% in
# 13.8 min, at 112 px 94.74% in 19.2 min (benchmarks/results/no_flag_after.json, no_flag_side112.json)
MAX_UPSCALE = 3.5
SIDE_STEP, MIN_SIDE, MAX_SIDE = 16, 96, 224
SIDE_RECIPES = ((128, "lite2_96"), (MAX_SIDE, "lite2_224"))  # the largest side each measured recipe is used up to


def auto_side(image_side: int) -> int:
    """The side to train a backbone at for images whose shorter side is ``image_side`` px: 3.5× it, in steps of 16,
    between 96 and 224 (small images are not blown up to 224 px)."""
    steps = int(MAX_UPSCALE * image_side / SIDE_STEP + 0.5)  # to the nearest step, halves up
    return min(MAX_SIDE, max(MIN_SIDE, SIDE_STEP * steps))


def auto_values(values: dict) -> tuple[dict, str]:
    """Config values for a run given no model, and why, in words: the best installed backbone at a side suited to
    the images of ``values['data']``, with the measured recipe for that side."""
    backbone = best_installed_backbone()
    if backbone is None:
        return {"model": FALLBACK}, "no pretrained backbone is installed"
    data = values.get("data", "cifar10")
    fmt = LabelFormat.of(values)
    image_side = BUILTIN_SIDE if is_builtin(data) else typical_side(data, fmt)
    side = auto_side(image_side)
    recipe = next(name for largest, name in SIDE_RECIPES if side <= largest)
    chosen = {**load_config_file(recipe), "model": backbone, "img_size": side}
    return chosen, f"images of ~{image_side} px; the {recipe} recipe"


def auto_note(model: str, img_size: int, why: str) -> str:
    """The line that says what a run given no model trains, and how to choose otherwise."""
    if model in MODELS:
        return f"no --model given: {model} from scratch ({why}); choose with --model NAME or --config RECIPE"
    return (
        f"no --model given: transfer learning from {model} (ImageNet weights) at {img_size} px ({why}); "
        "choose with --model NAME or --config RECIPE"
    )


def family_defaults(model: str) -> dict:
    """The defaults a model's family brings beneath a config file and flags: a timm model's fine-tuning recipe."""
    return {} if model in MODELS else load_config_file(FINETUNE)
