"""Training configuration: one dataclass that is the single source of CLI flags, YAML keys and defaults."""

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from imgclf.data.decode import RESIZE_POLICIES
from imgclf.errors import ImgclfError

AUGMENTATIONS = ("fast", "alternating", "reference", "trivial", "none")  # data/augment.py implements them


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
    lr_start: float = option(0.0, "the warmup starts at this fraction of the peak learning rate")
    lr_end: float = option(0.0, "onecycle and cosine end at this fraction of the peak learning rate")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy loss")
    mixup: float = option(0.0, "mixup of training inputs (images or cached activations) and labels, Beta(α, α); 0: off")
    cutmix: float = option(
        0.0,
        "CutMix of training images (or cached activation maps) and labels, Beta(α, α); with --mixup, either per batch",
    )
    ema_decay: float = option(0.0, "decay of an exponential moving average of weights, evaluated instead (0: off)")
    lookahead: bool = option(
        False, "Lookahead: every 5 steps the weights restart from their slow average, whose pull grows to 0.77"
    )
    sync_bn: bool = option(False, "torchrun: BatchNorm statistics over the global batch, not each rank's share")
    pretrained: bool = option(False, "timm models: start from ImageNet weights (installed package, or timm's hub)")
    weights: str | None = option(None, "timm models: local ImageNet weights file (.safetensors or .pth) to start from")
    img_size: int = option(0, "timm models: side the images are resized to (0: the backbone's native side)")
    dropout: float = option(0.2, "timm models: dropout before the new classifier")
    drop_path: float = option(0.0, "timm models: stochastic depth of the residual blocks (timm's drop_path_rate)")
    head_epochs: int = option(0, "timm models: phase 1 epochs, training only the new head on the frozen backbone")
    head_lr: float = option(1e-3, "timm models: peak learning rate of phase 1")
    unfreeze: str = option("0.25", "timm models: layers fine-tuned in phase 2: a count N, a fraction like 0.25, or all")
    layer_decay: float = option(1.0, "timm models: discriminative learning rates, each earlier layer's rate × this")
    cache: bool = option(True, "timm models: train on frozen-backbone activations computed once and cached on disk")
    cache_dir: str | None = option(None, "folder of the activation cache (default: ~/.cache/imgclf/activations)")
    compile: bool = option(
        True,
        "compile the frozen backbone while caching (CPU: onnxruntime, torch.compile where its export fails) "
        "and the network being trained (GPU: torch.compile)",
    )
    compile_mode: str = option(
        "default",
        "torch.compile mode on a GPU: default (fused kernels), reduce-overhead (also CUDA graphs), max-autotune",
        ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    )
    augment: str = option(
        "fast",
        "augmentation: crop+flip (fast), 2-px crop + flips alternating by epoch (airbench's), the reference's Keras "
        "recipe, fast + TrivialAugment per image, or none",
        AUGMENTATIONS,
    )
    cutout: int = option(0, "side of the square cut out of each training image (0: off)")
    feature_shift: int = option(
        0, "timm models, cached path: phase 2 shifts each cached activation map by up to N positions (random crop)"
    )
    progressive_size: int = option(
        0, "progressive resizing: first epochs start at this image side, e.g. 16, and ramp up (0: off)"
    )
    progressive_fraction: float = option(0.5, "fraction of the epochs over which the image side ramps up to full size")
    data: str = option(
        "cifar10", "dataset: cifar10, cifar100, or a folder of images (DIR/<class>/… or DIR/train|val|test/<class>/…)"
    )
    data_size: int = option(
        0, "side the images are stored and trained at (0: 32 from scratch, the input side of a transfer backbone)"
    )
    resize: str = option(
        "crop",
        "folder images to squares: shorter side then centre crop, pad the longer side, or stretch",
        RESIZE_POLICIES,
    )
    val_fraction: float = option(0.1, "fraction of the training images held out for validation (stratified, seeded)")
    test_fraction: float = option(0.1, "a folder without test/: share of each class held out for testing (fixed seed)")
    train_subset: int = option(
        0, "train on only N images of the training split (CIFAR: the first N, a folder: N at random; 0: all); for tests"
    )
    test_subset: int = option(0, "evaluate on only N test images (CIFAR: the first N, a folder: N at random; 0: all)")
    seed: int = option(0, "random seed for initialisation, split, shuffling and augmentation")
    precision: str = option(
        "auto", "numeric precision: bf16 autocast where native, else fp32", ("auto", "bf16", "fp32")
    )
    channels_last: bool = option(True, "use channels-last memory format")
    device: str = option("auto", "device: auto, cpu, cuda or cuda:N")
    threads: int = option(0, "CPU threads (0: the cores other processes leave free, re-measured as training runs)")
    monitor: str = option("val_acc", "validation metric watched by the callbacks", ("val_acc", "val_loss"))
    early_stopping: int = option(0, "stop after this many epochs without improvement (0: off)")
    reduce_lr_patience: int = option(0, "reduce the learning rate after this many epochs without improvement (0: off)")
    reduce_lr_factor: float = option(0.5, "factor applied by reduce-LR-on-plateau")
    data_dir: str | None = option(
        None, "--data cifar10/cifar100: folder holding their downloaded files (default: $IMGCLF_DATA_DIR or download)"
    )
    download: bool = option(False, "download CIFAR into --data-dir when it is missing")
    prepare_dir: str | None = option(None, "folder of prepared folder datasets (default: ~/.cache/imgclf/prepared)")
    workers: int = option(0, "processes decoding a folder's images (0: one per available CPU core)")
    output: str = option("runs", "parent folder of run directories")
    name: str | None = option(None, "run directory name (default: MODEL-TIMESTAMP)")
    checkpoint_every: float = option(
        0.0, "seconds of training between checkpoints (0: after every epoch); the last epoch always writes one"
    )
    evaluate: bool = option(True, "evaluate the best checkpoint on the test split when training ends")
    tta: bool = option(False, "evaluation also reports flip test-time augmentation (separately)")
    tta_shift: int = option(
        0, "networks from scratch: test-time augmentation also averages views shifted ±N px diagonally (0: flips only)"
    )
    progress: bool = option(True, "show progress bars")
    tensorboard: bool = option(True, "write TensorBoard scalars")

    def validate(self) -> "TrainConfig":
        """Raise a one-line error for the first invalid value."""
        from imgclf.data.datasets import is_builtin
        from imgclf.device import check_device_name
        from imgclf.models import MODELS
        from imgclf.models.backbones import is_timm_model, unfrozen_units

        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name))
        if self.model not in MODELS and not is_timm_model(self.model):
            raise ImgclfError(
                f"unknown model {shown(self.model)} (imgclf models: {', '.join(MODELS)}; or any timm model name)"
            )
        if self.model in MODELS:
            transfer = ("pretrained", "weights", "img_size", "head_epochs", "feature_shift")
            if used := [n for n in transfer if getattr(self, n)]:
                raise ImgclfError(f"--{used[0].replace('_', '-')} applies to timm models, not '{self.model}'")
        check_unfreeze(self.unfreeze)
        unfrozen_units(self.unfreeze, 1)  # validates the spelling
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ImgclfError(f"invalid {flag(f.name)} {shown(value)} (choose from: {', '.join(choices)})")
        check_device_name(self.device)
        if self.name is not None:
            check_run_name(self.name)
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ImgclfError(f"--batch-size must be a positive integer up to {MAX_BATCH_SIZE}, got {self.batch_size}")
        if self.epochs < 0 or (self.epochs == 0 and not self.head_epochs):
            raise ImgclfError(f"--epochs must be a positive integer, got {self.epochs}")
        if not 0 <= self.seed < 2**32:
            raise ImgclfError(f"--seed must be in [0, 2**32), got {self.seed}")
        for name in (
            "lr",
            "head_lr",
            "head_epochs",
            "img_size",
            "data_size",
            "dropout",
            "drop_path",
            "layer_decay",
            "weight_decay",
            "warmup_epochs",
            "mixup",
            "cutmix",
            "cutout",
            "feature_shift",
            "progressive_size",
            "train_subset",
            "test_subset",
            "early_stopping",
            "reduce_lr_patience",
            "workers",
            "threads",
            "tta_shift",
            "checkpoint_every",
        ):
            if getattr(self, name) < 0:
                raise ImgclfError(f"{flag(name)} must not be negative, got {getattr(self, name)}")
        for name in ("lr_start", "lr_end"):
            if not 0 <= getattr(self, name) <= 1:
                raise ImgclfError(f"{flag(name)} must be in [0, 1], got {getattr(self, name)}")
        if self.lookahead and self.ema_decay:
            raise ImgclfError("--lookahead and --ema-decay each average the weights; choose one")
        if self.tta_shift and self.is_transfer:
            raise ImgclfError("--tta-shift applies to networks trained from scratch, not timm models")
        if self.tta_shift > 8:
            raise ImgclfError(f"--tta-shift must be at most 8 pixels, got {self.tta_shift}")
        for name in ("dropout", "drop_path"):
            if getattr(self, name) >= 1:
                raise ImgclfError(f"{name} must be in [0, 1), got {getattr(self, name)}")  # tests match this spelling
        for name in ("momentum", "label_smoothing", "val_fraction", "test_fraction", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ImgclfError(f"{flag(name)} must be in [0, 1), got {getattr(self, name)}")
        for name in ("img_size", "data_size"):
            if getattr(self, name) > MAX_IMAGE_SIDE:
                raise ImgclfError(
                    f"{flag(name)} must be at most {MAX_IMAGE_SIDE}, got {getattr(self, name)}: "
                    "images of that side cannot fit in memory"
                )
        if 0 < self.data_size < 32:
            raise ImgclfError(f"--data-size must be at least 32 (or 0: the default), got {self.data_size}")
        if not is_builtin(self.data) and self.val_fraction + self.test_fraction >= 1:
            raise ImgclfError(
                f"--val-fraction + --test-fraction must be below 1 (no training images would be left), "
                f"got {self.val_fraction} + {self.test_fraction}"
            )
        if not 0 <= self.progressive_fraction <= 1:
            raise ImgclfError(f"--progressive-fraction must be in [0, 1], got {self.progressive_fraction}")
        if not 0 < self.reduce_lr_factor <= 1:
            raise ImgclfError(f"--reduce-lr-factor must be in (0, 1], got {self.reduce_lr_factor}")
        if self.val_fraction == 0 and (self.early_stopping or self.reduce_lr_patience):
            raise ImgclfError("early stopping and reduce-LR-on-plateau need a validation split (--val-fraction > 0)")
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


MAX_BATCH_SIZE = 65536
MAX_IMAGE_SIDE = 1024  # a larger side does not fit in memory for a dataset of images (or in a GPU for a batch)
MAX_RUN_NAME_BYTES = 200
MAX_YAML_BYTES = 1 << 20  # config files and presets are a few lines; a larger file is the wrong file


def flag(name: str) -> str:
    """The command-line spelling of config field ``name``, e.g. ``--label-smoothing``."""
    return "--" + name.replace("_", "-")


def optional_fields() -> frozenset[str]:
    """The config fields that may be null (their type is ``X | None``)."""
    return frozenset(f.name for f in dataclasses.fields(TrainConfig) if type(None) in typing.get_args(f.type))


def one_line(text: str) -> str:
    """``text`` with its lines joined, so an error message stays on one line."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def shown(value, limit: int = 80) -> str:
    """A short one-line repr of ``value`` for an error message."""
    text = "null" if value is None else one_line(repr(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def os_reason(exc: OSError) -> str:
    """The operating system's reason for ``exc``, lower-case, e.g. 'no space left on device'."""
    reason = exc.strerror or one_line(str(exc)) or type(exc).__name__
    return reason[:1].lower() + reason[1:]


def check_value(name: str, value) -> None:
    """A one-line error when config field ``name`` holds a value of the wrong type, nan/inf or a NUL character."""
    kind = field_types()[name]
    if value is None:
        if name in optional_fields():
            return
        raise ImgclfError(f"{flag(name)} must be {kind.__name__}, got null")
    if kind is str and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if kind is bool:
        fits = isinstance(value, bool)
    elif kind is float:
        fits = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        fits = isinstance(value, kind) and not isinstance(value, bool)
    if not fits:
        raise ImgclfError(f"{flag(name)} must be {kind.__name__}, got {shown(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ImgclfError(f"{flag(name)} must be a finite number, got {value}")
    if isinstance(value, str) and "\0" in value:
        raise ImgclfError(f"{flag(name)} must not contain a NUL character, got {shown(value)}")


def check_unfreeze(spec: str) -> None:
    """A one-line error for an ``--unfreeze`` that parses as nan or infinity (the rest: ``unfrozen_units``)."""
    try:
        value = float(spec)
    except ValueError:
        return
    if not math.isfinite(value):
        raise ImgclfError(f"--unfreeze must be 'all', a number of layers or a fraction in [0, 1], got '{spec}'")


def check_run_name(name: str) -> None:
    """A one-line error unless ``name`` can be a run directory's name: one path component, not '.' or '..'."""
    if not isinstance(name, str) or not name:
        raise ImgclfError(f"--name must be a non-empty folder name, got {shown(name)}")
    if name in (".", ".."):
        raise ImgclfError(f"--name must be a folder name, not '{name}'")
    if "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        raise ImgclfError(f"--name must be a folder name without path separators, got {shown(name)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ImgclfError(f"--name must not contain NUL or other control characters, got {shown(name)}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ImgclfError(f"--name must be valid UTF-8 text, got {shown(name)}") from None
    if size > MAX_RUN_NAME_BYTES:
        raise ImgclfError(f"--name must be at most {MAX_RUN_NAME_BYTES} bytes long, got {size} bytes")


def check_writable_folder(path: str | os.PathLike, what: str) -> None:
    """A one-line error unless ``path`` is a folder, or can be created as one, that this process may write into."""
    text = os.fspath(path)
    if not text:
        raise ImgclfError(f"{what} must not be empty")
    if "\0" in text:
        raise ImgclfError(f"{what} must not contain a NUL character, got {shown(text)}")
    target = Path(text)
    folder = next((p for p in (target, *target.parents) if os.path.lexists(p)), Path("."))
    if not folder.is_dir():
        where = "" if folder == target else f": {folder} exists and is not a folder"
        raise ImgclfError(f"{what} {target} is not a folder{where}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ImgclfError(f"{what} {target} is not writable ({folder}: permission denied or read-only file system)")


def coerce(key: str, value, source: str):
    """Convert ``value`` to the type of config field ``key``, or raise a one-line error."""
    kind = field_types()[key]
    if value is None:
        if key in optional_fields():
            return None
        raise ImgclfError(f"{source}: '{key}' must be {kind.__name__}, got null")
    if kind is bool and isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ImgclfError(f"{source}: '{key}' is too large for a float, got {shown(value)}") from None
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise ImgclfError(f"{source}: '{key}' must be {kind.__name__}, got {shown(value)}")


def parse_yaml(text: str, what: str):
    """The value of YAML ``text`` (safe loader: no Python objects), or a one-line error naming ``what``."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = one_line(exc.problem or exc.context or str(exc))
        if "tag:yaml.org,2002:python/" in problem:
            tag = problem.split("tag:yaml.org,2002:", 1)[1].rstrip("'")
            raise ImgclfError(f"{what} uses the tag !!{tag}{where}: only plain YAML values are read") from None
        raise ImgclfError(f"{what} is not valid YAML: {problem}{where}") from None
    except yaml.YAMLError as exc:
        raise ImgclfError(f"{what} is not valid YAML: {one_line(str(exc))}") from None
    except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:  # e.g. a date 2001-13-45, !!int x
        raise ImgclfError(f"{what} is not valid YAML: {one_line(str(exc)) or type(exc).__name__}") from None


def read_yaml_file(path: Path, what: str):
    """The YAML value stored in file ``path``, or a one-line error naming ``what`` and the path."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ImgclfError(f"cannot read {what} {path}: {os_reason(exc)}") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ImgclfError(f"{what} {path} is larger than {MAX_YAML_BYTES // 1024} KiB: not a YAML file of options")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImgclfError(
            f"{what} {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    return parse_yaml(text, f"{what} {path}")


def type_name(value) -> str:
    """'a list', 'a string'… : what a YAML value is, for an error message."""
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean", dict: "a mapping"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# options that do not change what a run computes: a finished run stays valid when they differ, --resume may set them
RUNTIME_OPTIONS = frozenset(
    {"progress", "tensorboard", "data_dir", "prepare_dir", "workers", "device", "evaluate", "tta", "output"}
    | {"cache_dir", "compile", "compile_mode", "threads", "checkpoint_every"}
)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def bundled_names(folder: Path = CONFIG_DIR) -> list[str]:
    """The names of the YAML files bundled in ``folder`` (by default the recipes)."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def bundled_or_file(name_or_path: str | Path, folder: Path, kind: str) -> Path:
    """An existing YAML file, or the name of one bundled in ``folder``; a one-line error naming ``kind`` otherwise."""
    text = os.fspath(name_or_path)
    bundled = bundled_names(folder)
    if not text or "\0" in text:
        raise ImgclfError(f"{kind} not found: {shown(text)} (bundled: {', '.join(bundled)})")
    path = Path(text)
    try:
        if path.is_file():
            return path
        if text in bundled:  # a bare name: the bundled file
            return folder / f"{text}.yaml"
        if path.is_dir():
            raise ImgclfError(f"{kind} {path} is a folder, not a YAML file")
        if os.path.lexists(path):
            raise ImgclfError(f"{kind} {path} is not a regular file")
    except OSError as exc:  # e.g. a name too long, a permission denied on a parent folder
        raise ImgclfError(f"cannot read {kind} {path}: {os_reason(exc)}") from None
    raise ImgclfError(f"{kind} not found: {text} (bundled: {', '.join(bundled)})")


def config_path(name_or_path: str | Path) -> Path:
    """A config file's path: an existing file, or the name of a bundled recipe."""
    return bundled_or_file(name_or_path, CONFIG_DIR, "config file")


def load_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML file (or bundled recipe) of config keys, rejecting unknown keys and wrong types in one line. A
    ``base: NAME`` key starts from another config (a bundled name or a path), whose keys the file then overrides."""
    path = config_path(path)
    data = read_yaml_file(path, "config file")
    if data is None:  # an empty file
        return {}
    if not isinstance(data, dict):
        raise ImgclfError(f"config file {path} must hold a mapping of option: value, got {type_name(data)}")
    values = {}
    if "base" in data:
        base = data.pop("base")
        if not isinstance(base, str):
            raise ImgclfError(f"base in config file {path} must name a config, got {type_name(base)}")
        if path.resolve() in _seen:
            raise ImgclfError(f"config file {path} is its own base (through {shown(base)})")
        if len(_seen) > 8:
            raise ImgclfError(f"config file {path}: bases nest more than 8 deep")
        where = base if Path(base).is_absolute() or base in bundled_names() else path.parent / base
        values = load_config_file(where, (*_seen, path.resolve()))
    return values | config_values(data, str(path), also=("base",))


def config_values(data: dict, source: str, also: tuple[str, ...] = ()) -> dict:
    """``data``'s options as config fields ('-' read as '_'), each value coerced to its field's type; an unknown key
    or a wrong type is a one-line error naming ``source`` (``also``: keys the caller takes besides the fields)."""
    known = field_types()
    names = {key: str(key).replace("-", "_") for key in data}
    for key, name in names.items():
        if name not in known:
            raise ImgclfError(f"unknown config key {shown(key)} in {source} (valid keys: {', '.join([*also, *known])})")
    return {name: coerce(name, data[key], source) for key, name in names.items()}


def build_config(file_values: dict, cli_values: dict) -> TrainConfig:
    """Defaults, overridden by a config file, overridden by command-line flags; validated, with a folder given as
    ``data`` made absolute (the run is evaluated from anywhere) and the output folder checked to be writable."""
    from imgclf.data.datasets import is_builtin

    cfg = TrainConfig(**{**file_values, **cli_values})
    if isinstance(cfg.data, str) and cfg.data and not is_builtin(cfg.data):
        cfg.data = str(Path(cfg.data).expanduser().resolve())
    cfg.validate()
    check_writable_folder(cfg.output, "--output")
    return cfg
