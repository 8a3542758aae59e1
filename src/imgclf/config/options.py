"""Training configuration: one dataclass that is the single source of CLI flags, YAML keys, defaults and checks;
each option carries its help, group, the models it applies to, and whether it changes what a run computes."""

import dataclasses
import typing
from dataclasses import dataclass, field

from imgclf.config.checks import (
    check_abstain_option,
    check_ranges,
    check_run_name,
    check_task_options,
    check_unfreeze,
    check_value,
    flag,
)
from imgclf.core.errors import ImgclfError, shown
from imgclf.data.edits import NO_EDITS, Edits, edit_file, read_edits
from imgclf.data.labelfile import DEFAULT_FORMAT, LabelFormat
from imgclf.data.policies import ABSTAIN_SCORES, AUGMENTATIONS, BALANCE_MODES, RESIZE_POLICIES, TASKS

# the groups of options, in the order `imgclf train --help` shows them
DATA, OPTIMISATION, REGULARISATION, CALLBACKS = "model and data", "optimisation", "regularisation", "callbacks"
TRANSFER, EVALUATION, RUNNING = "transfer learning (timm models)", "evaluation", "running"
GROUPS = (DATA, OPTIMISATION, REGULARISATION, CALLBACKS, TRANSFER, EVALUATION, RUNNING)
# the models an option applies to: every model, networks from scratch (imgclf's), or timm backbones (transfer)
ALL, SCRATCH, TIMM = "all", "scratch", "timm"


def option(
    default,
    help: str,
    choices: tuple | None = None,
    *,
    group: str,
    applies: str = ALL,
    runtime: bool = False,
    cli_default=None,
):
    """A config field with its help text, allowed values, group and the models it applies to; ``runtime`` options
    change how a run is computed, not what (a finished run stays valid when they differ; --resume may set them);
    ``cli_default``: what the command line does without the option, where that differs from the field's default."""
    metadata = {"help": help, "choices": choices, "group": group, "applies": applies, "runtime": runtime}
    metadata["cli_default"] = default if cli_default is None else cli_default
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.yaml`` in the run directory."""

    model: str = option(
        "resnet20",
        "network to train: an imgclf model or any timm model name (see `imgclf models`); auto: transfer learning from "
        "the best installed ImageNet backbone at a side suited to the images, with its recipe",
        group=DATA,
        cli_default="auto",
    )
    epochs: int = option(
        30, "number of training epochs (transfer learning: of phase 2, fine-tuning)", group=OPTIMISATION
    )
    batch_size: int = option(256, "images per optimizer step", group=OPTIMISATION)
    optimizer: str = option(
        "sgd", "optimizer: SGD with Nesterov momentum, or AdamW", ("sgd", "adamw"), group=OPTIMISATION
    )
    lr: float = option(0.2, "peak learning rate", group=OPTIMISATION)
    momentum: float = option(0.9, "SGD momentum", group=OPTIMISATION)
    weight_decay: float = option(5e-4, "weight decay (not applied to norm layers and biases)", group=OPTIMISATION)
    schedule: str = option(
        "onecycle", "learning-rate schedule after warmup", ("onecycle", "cosine", "constant"), group=OPTIMISATION
    )
    warmup_epochs: float = option(1.0, "linear learning-rate warmup, in epochs", group=OPTIMISATION)
    lr_start: float = option(0.0, "the warmup starts at this fraction of the peak learning rate", group=OPTIMISATION)
    lr_end: float = option(
        0.0, "onecycle and cosine end at this fraction of the peak learning rate", group=OPTIMISATION
    )
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy loss", group=OPTIMISATION)
    mixup: float = option(
        0.0,
        "mixup of training inputs (images or cached activations) and labels, Beta(α, α); 0: off",
        group=REGULARISATION,
    )
    cutmix: float = option(
        0.0,
        "CutMix of training images (or cached activation maps) and labels, Beta(α, α); with --mixup, either per batch",
        group=REGULARISATION,
    )
    ema_decay: float = option(
        0.0, "decay of an exponential moving average of weights, evaluated instead (0: off)", group=OPTIMISATION
    )
    lookahead: bool = option(
        False,
        "Lookahead: every 5 steps the weights restart from their slow average, whose pull grows to 0.77",
        group=OPTIMISATION,
    )
    sync_bn: bool = option(
        False, "torchrun: BatchNorm statistics over the global batch, not each rank's share", group=OPTIMISATION
    )
    pretrained: bool = option(
        True,
        "timm models: start from ImageNet weights (installed package, or timm's hub; an error where none can be had)",
        group=TRANSFER,
        applies=TIMM,
    )
    weights: str | None = option(
        None,
        "timm models: local ImageNet weights file (.safetensors or .pth) to start from",
        group=TRANSFER,
        applies=TIMM,
    )
    img_size: int = option(
        0, "timm models: side the images are resized to (0: the backbone's native side)", group=TRANSFER, applies=TIMM
    )
    dropout: float = option(0.2, "timm models: dropout before the new classifier", group=TRANSFER, applies=TIMM)
    drop_path: float = option(
        0.0,
        "timm models: stochastic depth of the residual blocks (timm's drop_path_rate)",
        group=TRANSFER,
        applies=TIMM,
    )
    head_epochs: int = option(
        0,
        "timm models: phase 1 epochs, training only the new head on the frozen backbone",
        group=TRANSFER,
        applies=TIMM,
    )
    head_lr: float = option(1e-3, "timm models: peak learning rate of phase 1", group=TRANSFER, applies=TIMM)
    unfreeze: str = option(
        "0.25",
        "timm models: layers fine-tuned in phase 2: a count N, a fraction like 0.25, or all",
        group=TRANSFER,
        applies=TIMM,
    )
    layer_decay: float = option(
        1.0,
        "timm models: discriminative learning rates, each earlier layer's rate × this",
        group=TRANSFER,
        applies=TIMM,
    )
    cache: bool = option(
        True,
        "timm models: train on frozen-backbone activations computed once and cached on disk",
        group=TRANSFER,
        applies=TIMM,
    )
    cache_dir: str | None = option(
        None,
        "folder of the activation cache (default: ~/.cache/imgclf/activations)",
        group=TRANSFER,
        applies=TIMM,
        runtime=True,
    )
    compile: bool = option(
        True,
        "compile the frozen backbone while caching (CPU: onnxruntime, torch.compile where its export fails) "
        "and the network being trained (GPU: torch.compile)",
        group=RUNNING,
        runtime=True,
    )
    compile_mode: str = option(
        "default",
        "torch.compile mode on a GPU: default (fused kernels), reduce-overhead (also CUDA graphs), max-autotune",
        ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        group=RUNNING,
        runtime=True,
    )
    augment: str = option(
        "fast",
        "augmentation: crop+flip (fast), 2-px crop + flips alternating by epoch (airbench's), the reference's Keras "
        "recipe, fast + TrivialAugment per image, or none",
        AUGMENTATIONS,
        group=REGULARISATION,
    )
    cutout: int = option(0, "side of the square cut out of each training image (0: off)", group=REGULARISATION)
    feature_shift: int = option(
        0,
        "timm models, cached path: phase 2 shifts each cached activation map by up to N positions (random crop)",
        group=TRANSFER,
        applies=TIMM,
    )
    progressive_size: int = option(
        0,
        "progressive resizing: first epochs start at this image side, e.g. 16, and ramp up (0: off)",
        group=REGULARISATION,
    )
    progressive_fraction: float = option(
        0.5, "fraction of the epochs over which the image side ramps up to full size", group=REGULARISATION
    )
    data: str = option(
        "cifar10",
        "dataset: cifar10, cifar100, a folder of images (DIR/<class>/… or DIR/train|val|test/<class>/…) or a label "
        "file (.csv, .tsv, .jsonl: file and label columns, optional split column)",
        group=DATA,
    )
    file_column: str | None = option(
        None, "label file: the column naming the image files (default: file, path, image, …)", group=DATA
    )
    label_column: str | None = option(
        None, "label file: the column naming the classes (default: label, labels, class, …)", group=DATA
    )
    label_separator: str = option(
        DEFAULT_FORMAT.label_separator,
        "label file: the separator between an image's labels in one field (multi-label)",
        group=DATA,
    )
    task: str = option(
        "auto",
        "one class per image (single) or any number (multilabel: sigmoid outputs, per-class thresholds fitted on "
        "validation); auto: multilabel when a label file gives an image several labels",
        TASKS,
        group=DATA,
    )
    exclude: str | None = option(
        None,
        "CSV of files to leave out of every split: audit.csv, its page's download, or any list with a file column",
        group=DATA,
    )
    relabel: str | None = option(
        None, "CSV of files and their new labels (file, new_label or suggested column): audit.csv works", group=DATA
    )
    data_size: int = option(
        0,
        "side the images are stored and trained at (0: 32 from scratch, the input side of a transfer backbone)",
        group=DATA,
    )
    resize: str = option(
        "crop",
        "folder images to squares: shorter side then centre crop, pad the longer side, or stretch",
        RESIZE_POLICIES,
        group=DATA,
    )
    balance: str = option(
        "auto",
        "classes of uneven size: logit-adjusted loss, class-weighted loss, class-balanced sampling, or none (auto: "
        "logit-adjust when the largest class has 3× the images of the smallest, else none)",
        BALANCE_MODES,
        group=DATA,
    )
    val_fraction: float = option(
        0.1, "fraction of the training images held out for validation (stratified, seeded)", group=DATA
    )
    test_fraction: float = option(
        0.1, "a folder without test/: share of each class held out for testing (fixed seed)", group=DATA
    )
    train_subset: int = option(
        0,
        "train on only N images of the training split (CIFAR: the first N, a folder: N at random; 0: all); for tests",
        group=DATA,
    )
    test_subset: int = option(
        0, "evaluate on only N test images (CIFAR: the first N, a folder: N at random; 0: all)", group=DATA
    )
    seed: int = option(0, "random seed for initialisation, split, shuffling and augmentation", group=DATA)
    precision: str = option(
        "auto", "numeric precision: bf16 autocast where native, else fp32", ("auto", "bf16", "fp32"), group=RUNNING
    )
    channels_last: bool = option(True, "use channels-last memory format", group=RUNNING)
    device: str = option("auto", "device: auto, cpu, cuda or cuda:N", group=RUNNING, runtime=True)
    threads: int = option(
        0,
        "CPU threads (0: the cores other processes leave free, re-measured as training runs)",
        group=RUNNING,
        runtime=True,
    )
    monitor: str = option(
        "auto",
        "validation metric the callbacks watch and the kept model is chosen on (auto: mean average precision for "
        "multi-label data, balanced accuracy when the training split is imbalanced, else accuracy; last: keep the "
        "final epoch, for a validation split too small to choose by, e.g. a handful of images in a class)",
        ("auto", "val_acc", "val_balanced_acc", "val_map", "val_loss", "last"),
        group=CALLBACKS,
    )
    early_stopping: int = option(0, "stop after this many epochs without improvement (0: off)", group=CALLBACKS)
    reduce_lr_patience: int = option(
        0, "reduce the learning rate after this many epochs without improvement (0: off)", group=CALLBACKS
    )
    reduce_lr_factor: float = option(0.5, "factor applied by reduce-LR-on-plateau", group=CALLBACKS)
    data_dir: str | None = option(
        None,
        "--data cifar10/cifar100: folder holding their downloaded files (default: $IMGCLF_DATA_DIR or download)",
        group=DATA,
        runtime=True,
    )
    download: bool = option(False, "download CIFAR into --data-dir when it is missing", group=DATA)
    prepare_dir: str | None = option(
        None, "folder of prepared folder datasets (default: ~/.cache/imgclf/prepared)", group=DATA, runtime=True
    )
    workers: int = option(
        0, "processes decoding a folder's images (0: one per available CPU core)", group=DATA, runtime=True
    )
    output: str = option("runs", "parent folder of run directories", group=RUNNING, runtime=True)
    name: str | None = option(None, "run directory name (default: MODEL-TIMESTAMP)", group=RUNNING)
    checkpoint_every: float = option(
        0.0,
        "seconds of training between checkpoints (0: after every epoch); the last epoch always writes one",
        group=RUNNING,
        runtime=True,
    )
    evaluate: bool = option(
        True, "evaluate the best checkpoint on the test split when training ends", group=EVALUATION, runtime=True
    )
    tta: bool = option(
        False, "evaluation also reports flip test-time augmentation (separately)", group=EVALUATION, runtime=True
    )
    tta_shift: int = option(
        0,
        "networks from scratch: test-time augmentation also averages views shifted ±N px diagonally (0: flips only)",
        group=EVALUATION,
        applies=SCRATCH,
    )
    abstain: str = option(
        "off",
        "answer 'unknown' when the model is not sure enough: auto (the lowest threshold on --abstain-score whose "
        "answered validation images err at most --target-risk), a probability of the top class, or off",
        group=EVALUATION,
        runtime=True,
    )
    abstain_score: str = option(
        next(iter(ABSTAIN_SCORES)),
        "what --abstain auto fits its threshold on: the energy of the logits (their logsumexp: tells novel classes "
        "apart best), or the calibrated probability of the top class",
        tuple(ABSTAIN_SCORES),
        group=EVALUATION,
        runtime=True,
    )
    target_risk: float = option(
        0.05, "--abstain auto: the error rate allowed among the answered images", group=EVALUATION, runtime=True
    )
    progress: bool = option(True, "show progress bars", group=RUNNING, runtime=True)
    tensorboard: bool = option(True, "write TensorBoard scalars", group=RUNNING, runtime=True)

    def validate(self, saved: bool = False) -> "TrainConfig":
        """Raise a one-line error for the first invalid value (``saved``: a finished run's config, whose options that
        do not apply to its model are left as they are — they never changed what it computed)."""
        from imgclf.core.device import check_device_name
        from imgclf.models import MODELS
        from imgclf.models.backbones import is_timm_model, unfrozen_units

        types, optional = field_types(), optional_fields()
        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name), types[f.name], f.name in optional)
        if self.model not in MODELS and not is_timm_model(self.model):
            raise ImgclfError(
                f"unknown model {shown(self.model)} (imgclf models: {', '.join(MODELS)}; or any timm model name)"
            )
        if not saved:
            check_applies(self)
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
        check_ranges(dataclasses.asdict(self))
        check_task_options(self.task, self.balance, self.monitor)
        check_abstain_option(self.abstain, self.target_risk, self.task)
        for what in ("exclude", "relabel"):
            if getattr(self, what):
                edit_file(getattr(self, what), what)
        return self

    @property
    def is_transfer(self) -> bool:
        """True when the model is a timm backbone rather than an imgclf network built from scratch."""
        from imgclf.models import MODELS

        return self.model not in MODELS

    @property
    def label_format(self) -> LabelFormat:
        """How a label file of this run is read: its columns, separator and task."""
        return LabelFormat.of(vars(self))

    @property
    def edits(self) -> Edits:
        """The files this run leaves out and relabels (``--exclude``, ``--relabel``)."""
        return (
            read_edits(self.exclude, self.relabel, self.label_separator) if self.exclude or self.relabel else NO_EDITS
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


APPLIES = {f.name: f.metadata["applies"] for f in dataclasses.fields(TrainConfig)}  # option → ALL, SCRATCH or TIMM


def applies_to(name: str, model: str) -> bool:
    """True when config option ``name`` applies to ``model`` (an imgclf network from scratch or a timm backbone)."""
    from imgclf.models import MODELS

    applies = APPLIES[name]
    return applies == ALL or (applies == SCRATCH) == (model in MODELS)


def check_applies(cfg: TrainConfig) -> None:
    """A one-line error for an option set (away from its default) on a model it does not apply to."""
    for f in dataclasses.fields(cfg):
        if getattr(cfg, f.name) != f.default and not applies_to(f.name, cfg.model):
            if APPLIES[f.name] == TIMM:
                raise ImgclfError(f"{flag(f.name)} applies to timm models, not '{cfg.model}'")
            raise ImgclfError(f"{flag(f.name)} applies to networks trained from scratch, not timm models")


def field_types() -> dict[str, type]:
    """The Python type of each config field (the Optional part removed)."""

    def base(kind) -> type:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if args else kind

    return {f.name: base(f.type) for f in dataclasses.fields(TrainConfig)}


def optional_fields() -> frozenset[str]:
    """The config fields that may be null (their type is ``X | None``)."""
    return frozenset(f.name for f in dataclasses.fields(TrainConfig) if type(None) in typing.get_args(f.type))


RUNTIME_OPTIONS = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["runtime"])
# what "auto" can resolve to, run by run (a run of an earlier version saved the value it used, or has no such key)
AUTO_RESOLVES = {
    "monitor": ("val_acc", "val_balanced_acc", "val_map"),
    "balance": ("none", "logit-adjust"),
}
