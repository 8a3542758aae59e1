"""Training configuration: one dataclass that is the single source of CLI flags, YAML keys and defaults."""

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from imgclf.errors import ImgclfError


def option(default, help: str, choices: tuple | None = None):
    """A config field with its help text (and allowed values) for the command line."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.yaml`` in the run directory."""

    model: str = option("resnet20", "network to train: an imgclf model or any timm model name (see `imgclf models`)")
    epochs: int = option(30, "number of training epochs (transfer learning: of phase 2, fine-tuning)")
    batch_size: int = option(256, "images per optimizer step")
    optimizer: str = option("sgd", "optimizer: SGD with Nesterov momentum, or AdamW", ("sgd", "adamw"))
    lr: float = option(0.2, "peak learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "weight decay (not applied to norm layers and biases)")
    schedule: str = option("onecycle", "learning-rate schedule after warmup", ("onecycle", "cosine", "constant"))
    warmup_epochs: float = option(1.0, "linear learning-rate warmup, in epochs")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy loss")
    mixup: float = option(0.0, "mixup of training inputs (images or cached activations) and labels, Beta(α, α); 0: off")
    ema_decay: float = option(0.0, "decay of an exponential moving average of weights, evaluated instead (0: off)")
    pretrained: bool = option(False, "timm models: start from ImageNet weights (installed package, or timm's hub)")
    weights: str | None = option(None, "timm models: local ImageNet weights file (.safetensors or .pth) to start from")
    img_size: int = option(0, "timm models: side the 32×32 images are resized to (0: the backbone's native side)")
    dropout: float = option(0.2, "timm models: dropout before the new classifier")
    drop_path: float = option(0.0, "timm models: stochastic depth of the residual blocks (timm's drop_path_rate)")
    head_epochs: int = option(0, "timm models: phase 1 epochs, training only the new head on the frozen backbone")
    head_lr: float = option(1e-3, "timm models: peak learning rate of phase 1")
    unfreeze: str = option("0.25", "timm models: layers fine-tuned in phase 2: a count N, a fraction like 0.25, or all")
    layer_decay: float = option(1.0, "timm models: discriminative learning rates, each earlier layer's rate × this")
    cache: bool = option(True, "timm models: train on frozen-backbone activations computed once and cached on disk")
    cache_dir: str | None = option(None, "folder of the activation cache (default: ~/.cache/imgclf/activations)")
    compile: bool = option(True, "compile the frozen backbone with torch.compile while caching (CPU)")
    augment: str = option(
        "fast",
        "augmentation: crop+flip (fast), the reference's Keras recipe, or none",
        ("fast", "reference", "none"),
    )
    cutout: int = option(0, "side of the square cut out of each training image (0: off)")
    feature_shift: int = option(
        0, "timm models, cached path: phase 2 shifts each cached activation map by up to N positions (random crop)"
    )
    progressive_size: int = option(
        0, "progressive resizing: first epochs start at this image side, e.g. 16, and ramp up (0: off)"
    )
    progressive_fraction: float = option(0.5, "fraction of the epochs over which the image side ramps up to full size")
    val_fraction: float = option(0.1, "fraction of the 50,000 training images held out for validation")
    train_subset: int = option(0, "train on only the first N images of the training split (0: all); for quick tests")
    test_subset: int = option(0, "evaluate on only the first N test images (0: all); for quick tests")
    seed: int = option(0, "random seed for initialisation, split, shuffling and augmentation")
    precision: str = option(
        "auto", "numeric precision: bf16 autocast where native, else fp32", ("auto", "bf16", "fp32")
    )
    channels_last: bool = option(True, "use channels-last memory format")
    device: str = option("auto", "device: auto, cpu, cuda or cuda:N")
    monitor: str = option("val_acc", "validation metric watched by the callbacks", ("val_acc", "val_loss"))
    early_stopping: int = option(0, "stop after this many epochs without improvement (0: off)")
    reduce_lr_patience: int = option(0, "reduce the learning rate after this many epochs without improvement (0: off)")
    reduce_lr_factor: float = option(0.5, "factor applied by reduce-LR-on-plateau")
    data_dir: str | None = option(None, "folder holding cifar-10-batches-py (default: $IMGCLF_DATA_DIR or download)")
    download: bool = option(False, "download CIFAR-10 into --data-dir when it is missing")
    output: str = option("runs", "parent folder of run directories")
    name: str | None = option(None, "run directory name (default: MODEL-TIMESTAMP)")
    evaluate: bool = option(True, "evaluate the best checkpoint on the test split when training ends")
    tta: bool = option(False, "evaluation also reports flip test-time augmentation (separately)")
    progress: bool = option(True, "show progress bars")
    tensorboard: bool = option(True, "write TensorBoard scalars")

    def validate(self) -> "TrainConfig":
        """Raise a one-line error for the first invalid value."""
        from imgclf.models import MODELS
        from imgclf.models.backbones import is_timm_model, unfrozen_units

        if self.model not in MODELS and not is_timm_model(self.model):
            raise ImgclfError(
                f"unknown model '{self.model}' (imgclf models: {', '.join(MODELS)}; or any timm model name)"
            )
        if self.model in MODELS:
            transfer = ("pretrained", "weights", "img_size", "head_epochs", "feature_shift")
            if used := [n for n in transfer if getattr(self, n)]:
                raise ImgclfError(f"--{used[0].replace('_', '-')} applies to timm models, not '{self.model}'")
        unfrozen_units(self.unfreeze, 1)  # validates the spelling
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ImgclfError(f"invalid {f.name} '{value}' (choose from: {', '.join(choices)})")
        if self.batch_size < 1:
            raise ImgclfError(f"batch_size must be a positive integer, got {self.batch_size}")
        if self.epochs < 0 or (self.epochs == 0 and not self.head_epochs):
            raise ImgclfError(f"epochs must be a positive integer, got {self.epochs}")
        for name in (
            "lr",
            "head_lr",
            "head_epochs",
            "img_size",
            "dropout",
            "drop_path",
            "layer_decay",
            "weight_decay",
            "warmup_epochs",
            "label_smoothing",
            "mixup",
            "cutout",
            "feature_shift",
            "train_subset",
            "test_subset",
            "early_stopping",
            "reduce_lr_patience",
        ):
            if getattr(self, name) < 0:
                raise ImgclfError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("dropout", "drop_path"):
            if getattr(self, name) >= 1:
                raise ImgclfError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.val_fraction < 1:
            raise ImgclfError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.progressive_fraction <= 1:
            raise ImgclfError(f"progressive_fraction must be in [0, 1], got {self.progressive_fraction}")
        if not 0 <= self.ema_decay < 1:
            raise ImgclfError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.val_fraction == 0 and (self.early_stopping or self.reduce_lr_patience):
            raise ImgclfError("early stopping and reduce-LR-on-plateau need a validation split (val_fraction > 0)")
        return self

    @property
    def is_transfer(self) -> bool:
        """True when the model is a timm backbone rather than an imgclf network built from scratch."""
        from imgclf.models import MODELS

        return self.model not in MODELS

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def field_types() -> dict[str, type]:
    """The Python type of each config field (the Optional part removed)."""

    def base(kind) -> type:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if args else kind

    return {f.name: base(f.type) for f in dataclasses.fields(TrainConfig)}


def coerce(key: str, value, source: str):
    """Convert ``value`` to the type of config field ``key``, or raise a one-line error."""
    kind = field_types()[key]
    if value is None:
        return None
    if kind is bool and isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str | int | float):
        return str(value)
    raise ImgclfError(f"{source}: '{key}' must be {kind.__name__}, got {value!r}")


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def bundled_or_file(name_or_path: str | Path, folder: Path, kind: str) -> Path:
    """An existing YAML file, or the name of one bundled in ``folder``; a one-line error naming ``kind`` otherwise."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if (folder / f"{name_or_path}.yaml").is_file():
        return folder / f"{name_or_path}.yaml"
    bundled = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise ImgclfError(f"{kind} not found: {name_or_path} (bundled: {bundled})")


def config_path(name_or_path: str | Path) -> Path:
    """A config file's path: an existing file, or the name of a bundled recipe."""
    return bundled_or_file(name_or_path, CONFIG_DIR, "config file")


def load_config_file(path: str | Path) -> dict:
    """Read a YAML file (or bundled recipe) of config keys, rejecting unknown keys and wrong types in one line."""
    path = config_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ImgclfError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ImgclfError(f"config file {path} must hold a mapping of option: value")
    known = field_types()
    for key in data:
        norm = str(key).replace("-", "_")
        if norm not in known:
            raise ImgclfError(f"unknown config key '{key}' in {path} (valid keys: {', '.join(known)})")
    return {str(k).replace("-", "_"): coerce(str(k).replace("-", "_"), v, str(path)) for k, v in data.items()}


def build_config(file_values: dict, cli_values: dict) -> TrainConfig:
    """Defaults, overridden by a config file, overridden by command-line flags; validated."""
    return TrainConfig(**{**file_values, **cli_values}).validate()
