"""The run directory: the one home of its file names, the model card, and a validating reader for each run file.

```
RUN/config.yaml  history.jsonl  summary.json  metrics.json  model.json  best.safetensors  report.html
    model.onnx + model.parity.json (`imgclf export`)
    split.json (folder data: each split's files)  data.json (the data's facts)  skipped.json (unreadable files)
    checkpoints/  figures/  tensorboard/  phase1/ phase2/ (transfer runs: each phase a run of its own)
```
Every reader turns a missing, damaged or foreign file into a one-line error naming it.
"""

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from imgclf.artifacts.weights import add_metadata
from imgclf.config.checks import MAX_IMAGE_SIDE
from imgclf.config.files import config_values, load_config_file
from imgclf.config.options import TrainConfig
from imgclf.core.errors import ImgclfError, shown
from imgclf.core.io import read_json, write_json, write_text
from imgclf.data.images import Splits
from imgclf.data.multilabel import is_multilabel
from imgclf.data.policies import RESIZE_POLICIES
from imgclf.data.sources import is_builtin, load_splits
from imgclf.models import MODELS
from imgclf.models.backbones import native_input_size
from imgclf.models.transfer import BUILD_OPTIONS, architecture

CONFIG = "config.yaml"
HISTORY = "history.jsonl"
SUMMARY = "summary.json"
METRICS = "metrics.json"
MODEL_CARD = "model.json"
BEST_WEIGHTS = "best.safetensors"
ONNX_MODEL = "model.onnx"
SPLIT = "split.json"
DATA = "data.json"
SKIPPED = "skipped.json"
REPORT = "report.html"
CHECKPOINTS = "checkpoints"
FIGURES = "figures"
TENSORBOARD = "tensorboard"
LOCK = ".lock"


@dataclass
class ModelCard:
    """What a trained model needs to be used: its classes, input and preprocessing, where its data came from."""

    model: str
    classes: list[str]
    input_size: int  # side of the network's input
    data_size: int  # side the images were stored at before any resize to input_size
    mean: list[float]
    std: list[float]
    resize: str  # how a non-square image became a square: crop, pad or stretch
    dataset: str  # display name, e.g. "CIFAR-10" or the folder's name
    data: str  # the source: cifar10, cifar100 or the folder
    data_fingerprint: str
    config: dict
    temperature: float | None = None  # fitted on the validation split by evaluation; None until then
    engine: dict | None = None  # how training computed the weights (summary.json's record); None before it ends
    architecture: dict = field(default_factory=dict)  # the network and its build options: what predicting rebuilds
    precision: str = "auto"  # the precision it trained in, which predicting uses unless told otherwise
    channels_last: bool = True  # the memory layout it trained in
    tta_shift: int = 0  # test-time augmentation: the diagonal shifts (px) averaged with the flips (0: flips only)
    task: str = "single"  # "multilabel": sigmoid probabilities, a class is predicted above its threshold
    thresholds: list[float] | None = None  # multilabel: per class, on the calibrated probabilities (fitted on val)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, data: object, source: str) -> "ModelCard":
        """A card from its JSON form, checked field by field."""
        kinds = {"model": str, "input_size": int, "data_size": int, "resize": str, "dataset": str, "data": str}
        kinds.update(data_fingerprint=str, config=dict, classes=list, mean=list, std=list)
        require(data, kinds, source)
        if not data["classes"] or not all(isinstance(c, str) for c in data["classes"]):
            raise ImgclfError(f"{source}: 'classes' must be a non-empty list of names")
        for key in ("mean", "std"):
            if len(data[key]) != 3 or not all(is_number(v) for v in data[key]):
                raise ImgclfError(f"{source}: '{key}' must be three numbers")
        if not all(v > 0 for v in data["std"]):
            raise ImgclfError(f"{source}: 'std' must be three positive numbers")
        for key in ("input_size", "data_size"):
            if not 0 < data[key] <= MAX_IMAGE_SIDE:
                raise ImgclfError(f"{source}: '{key}' must be a side of 1 to {MAX_IMAGE_SIDE} pixels, got {data[key]}")
        if data["resize"] not in RESIZE_POLICIES:
            raise ImgclfError(f"{source}: 'resize' must be one of {', '.join(RESIZE_POLICIES)}, got {data['resize']!r}")
        temperature, engine = data.get("temperature"), data.get("engine")
        if temperature is not None and not (is_number(temperature) and temperature > 0):
            raise ImgclfError(f"{source}: 'temperature' must be a positive number")
        if engine is not None and not isinstance(engine, dict):
            raise ImgclfError(f"{source}: 'engine' must be a JSON object")
        optional = {"temperature", "engine", *INFERENCE_FIELDS}
        required = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name not in optional}
        return cls(**required, temperature=temperature, engine=engine, **inference_fields(data, source))


# the card's own since issue 27 (task and thresholds since multi-label, issue 28)
INFERENCE_FIELDS = ("architecture", "precision", "channels_last", "tta_shift", "task", "thresholds")


def inference_fields(data: dict, source: str) -> dict:
    """A card's architecture, precision, layout and TTA shift, checked; a card of an earlier version (29b1695 and
    before) had them only inside its training config, where they are read from."""
    config = data["config"]
    fields = {
        "architecture": data.get("architecture")
        or architecture(TrainConfig(**config_values(config, f"{source} config"))),
        "precision": data.get("precision", config.get("precision", "auto")),
        "channels_last": data.get("channels_last", config.get("channels_last", True)),
        "tta_shift": data.get("tta_shift", config.get("tta_shift", 0)),
        "task": data.get("task", "single"),
        "thresholds": data.get("thresholds"),
    }
    arch = fields["architecture"]
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise ImgclfError(f"{source}: 'architecture' must be an object naming the network ('name')")
    if missing := [key for key in BUILD_OPTIONS if arch["name"] not in MODELS and key not in arch]:
        raise ImgclfError(f"{source}: 'architecture' of a timm network needs '{missing[0]}'")
    if fields["precision"] not in ("auto", "bf16", "fp32"):
        raise ImgclfError(f"{source}: 'precision' must be auto, bf16 or fp32, got {fields['precision']!r}")
    if not isinstance(fields["channels_last"], bool):
        raise ImgclfError(f"{source}: 'channels_last' must be true or false")
    if (
        not isinstance(fields["tta_shift"], int)
        or isinstance(fields["tta_shift"], bool)
        or not 0 <= fields["tta_shift"] <= 8
    ):
        raise ImgclfError(f"{source}: 'tta_shift' must be a whole number of pixels from 0 to 8")
    check_task(fields["task"], fields["thresholds"], len(data["classes"]), source)
    return fields


def check_task(task: object, thresholds: object, classes: int, source: str) -> None:
    """A one-line error for a task other than single or multilabel, or thresholds that are not one probability in
    [0, 1] per class (or null)."""
    if task not in ("single", "multilabel"):
        raise ImgclfError(f"{source}: 'task' must be single or multilabel, got {shown(task)}")
    if thresholds is None:
        return
    if not isinstance(thresholds, list) or len(thresholds) != classes:
        raise ImgclfError(f"{source}: 'thresholds' must be a list of one number per class ({classes})")
    if not all(is_number(t) and 0 <= t <= 1 for t in thresholds):
        raise ImgclfError(f"{source}: 'thresholds' must be probabilities from 0 to 1")


def is_number(value: object) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def require(data: object, fields: dict[str, type], source: str, hint: str = "") -> dict:
    """``data`` as a dict holding ``fields`` of their types (``float``: any finite number), else a one-line error."""
    if not isinstance(data, dict):
        raise ImgclfError(f"{source} must hold a JSON object{hint}")
    for key, kind in fields.items():
        value = data.get(key)
        ok = is_number(value) if kind is float else isinstance(value, kind) and not isinstance(value, bool)
        if not ok:
            expected = "a number" if kind is float else kind.__name__
            raise ImgclfError(f"{source}: '{key}' is missing or not {expected}{hint}")
    return data


class RunDir:
    """A run directory: paths of its files and validating readers and writers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        """The path of ``name`` (one of this module's file names) in the run."""
        return self.path / name

    def phase(self, number: int) -> "RunDir":
        """The run directory of a transfer run's phase ``number``."""
        return RunDir(self.path / f"phase{number}")

    def exists(self) -> bool:
        """True when this is a run directory (it has a config)."""
        return self.file(CONFIG).is_file()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run for this process: a second imgclf training or evaluating it at the same time would interleave
        its writes, so it gets a one-line error instead (advisory ``flock`` on RUN/.lock; none where unsupported)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.file(LOCK), "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ImgclfError(f"{self.path} is in use by another imgclf process (train or evaluate)") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # configuration
    def read_config(self) -> TrainConfig:
        """The configuration the run was trained with, checked like a config file (options its model does not take
        are left as saved: a run of an earlier version, whose defaults differed, still loads)."""
        path = self.file(CONFIG)
        if not path.is_file():
            raise ImgclfError(f"not a run directory (no {CONFIG}): {self.path}")
        return TrainConfig(**load_config_file(path)).validate(saved=True)

    def write_config(self, cfg: TrainConfig) -> None:
        write_text(self.file(CONFIG), yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # summary, metrics, history
    def read_summary(self) -> dict:
        """``summary.json``: what training measured."""
        fields = {"model": str, "parameters": int, "epochs_run": int, "train_seconds": float}
        return require(read_json(self.file(SUMMARY), "run summary"), fields, str(self.file(SUMMARY)))

    def write_summary(self, summary: dict) -> None:
        write_json(self.file(SUMMARY), summary)

    def read_metrics(self) -> dict:
        """``metrics.json``: what evaluation measured."""
        path = self.file(METRICS)
        hint = f"; re-evaluate with `imgclf evaluate {self.path}`"
        if not path.is_file():
            raise ImgclfError(f"{self.path} has no {METRICS}{hint}")
        fields = {"model": str, "test_accuracy": float, "test_loss": float, "overfitting_gap": float}
        fields.update(parameters=int, trainable_parameters=int, inference_images_per_second=float)
        fields.update(calibration=dict, per_class=dict)
        metrics = require(read_json(path, "run metrics"), fields, str(path), hint)
        require(metrics["calibration"], {"ece": float}, f"{path} calibration", hint)
        for name, scores in metrics["per_class"].items():
            require(scores, {"accuracy": float}, f"{path} per_class '{name}'", hint)
        return metrics

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.file(METRICS), metrics)

    def read_history(self) -> list[dict]:
        """``history.jsonl``: one record per finished epoch (empty when training has not finished one)."""
        return read_history(self.file(HISTORY))

    # model card
    def read_card(self) -> ModelCard | None:
        """The model card (``model.json``); None for runs of imgclf versions that did not write one."""
        path = self.file(MODEL_CARD)
        if not path.is_file():
            return None
        return ModelCard.from_dict(read_json(path, "model card"), str(path))

    def write_card(self, card: ModelCard) -> None:
        """``model.json``, and the same card in the best weights' safetensors metadata."""
        write_json(self.file(MODEL_CARD), card.to_dict())
        if self.file(BEST_WEIGHTS).is_file():
            add_metadata(self.file(BEST_WEIGHTS), {"model_card": card.to_dict()})

    # data
    def read_split(self) -> dict[str, list[str]] | None:
        """The files of each split of a folder dataset (None for built-in datasets)."""
        path = self.file(SPLIT)
        if not path.is_file():
            return None
        lists = read_json(path, "split file")
        if not isinstance(lists, dict) or set(lists) != {"train", "val", "test"}:
            raise ImgclfError(f"{path} must map train, val and test to lists of files")
        for split, files in lists.items():
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise ImgclfError(f"{path}: '{split}' must be a list of file names")
        every = [f for files in lists.values() for f in files]
        if len(set(every)) != len(every):
            raise ImgclfError(f"{path} names a file twice (the splits must be disjoint)")
        return lists

    def read_data_split(self, cfg: TrainConfig) -> dict[str, list[str]] | None:
        """The saved split of a folder run (an error when it is missing), None for built-in datasets."""
        lists = self.read_split()
        if lists is None and not is_builtin(cfg.data):
            raise ImgclfError(f"{self.path} has no {SPLIT}: the run's test files are unknown; train it again")
        return lists

    def write_data(self, lists: dict[str, list[str]] | None, info: dict) -> None:
        """The split's file lists, the data's facts and the skipped files."""
        if lists is not None:
            write_json(self.file(SPLIT), lists)
        write_json(self.file(DATA), {k: v for k, v in info.items() if k != "skipped"})
        if info.get("skipped"):
            write_json(self.file(SKIPPED), info["skipped"])


def read_history(path: Path) -> list[dict]:
    """The epoch records of a ``history.jsonl`` file (empty if it does not exist); a one-line error naming a damaged
    line."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ImgclfError(f"cannot read {path}: {exc}".splitlines()[0]) from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ImgclfError(f"{path} line {number} is not valid JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise ImgclfError(f"{path} line {number} is not an epoch record")
        records.append(record)
    return records


def data_side(cfg: TrainConfig) -> int:
    """The side images are stored at: ``--data-size``, else a folder's images at a transfer backbone's input side;
    0 leaves the source's own default (CIFAR's 32 px, a folder's 32 px for networks from scratch)."""
    if cfg.data_size or not cfg.is_transfer or is_builtin(cfg.data):
        return cfg.data_size
    return cfg.img_size or native_input_size(cfg.model)


def run_splits(cfg: TrainConfig, lists: dict[str, list[str]] | None = None, card: "ModelCard | None" = None) -> Splits:
    """The data of a run with options ``cfg`` (``lists``: a folder run's saved split, used exactly; ``card``: a trained
    model's card, whose stored side and task are read back, else :func:`data_side` and ``--task``)."""
    side = card.data_size if card is not None else None
    if card is not None and cfg.task == "auto":  # read as its model was trained, whatever the separator finds now
        cfg = dataclasses.replace(cfg, task=card.task)
    return load_splits(
        cfg.data,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        train_subset=cfg.train_subset,
        test_subset=cfg.test_subset,
        side=data_side(cfg) if side is None else side,
        resize=cfg.resize,
        data_dir=cfg.data_dir,
        download=cfg.download or None,
        prepare_dir=cfg.prepare_dir,
        workers=cfg.workers,
        progress=cfg.progress,
        lists=lists,
        fmt=cfg.label_format,
        edits=cfg.edits,
    )


def model_card(cfg: TrainConfig, splits: Splits, input_size: int, mean, std) -> ModelCard:
    """The card of a model trained with ``cfg`` on ``splits`` at ``input_size`` with normalisation ``mean``/``std``."""
    return ModelCard(
        model=cfg.model,
        classes=list(splits.classes),
        input_size=input_size,
        data_size=splits.side,
        mean=[float(v) for v in mean],
        std=[float(v) for v in std],
        resize=cfg.resize,
        dataset=splits.name,
        data=cfg.data,
        data_fingerprint=splits.fingerprint,
        config=cfg.to_dict(),
        architecture=architecture(cfg),
        precision=cfg.precision,
        channels_last=cfg.channels_last,
        tta_shift=cfg.tta_shift,
        task=task_of(splits),
    )


def task_of(splits: Splits) -> str:
    """The task of ``splits``: multilabel when its labels are multi-hot, else single."""
    return "multilabel" if is_multilabel(splits.train.labels) else "single"


def check_card(card: ModelCard | None, splits: Splits, run: RunDir) -> None:
    """A one-line error when the data found now is not the data the run's model was trained on."""
    if card is not None and card.classes != splits.classes:
        differ = sorted(set(card.classes) ^ set(splits.classes))
        detail = f"class '{differ[0]}' differs" if differ else "the class order differs"
        raise ImgclfError(f"the data of {run.path} has changed since training ({detail}): the model needs its classes")
    task = task_of(splits)
    if card is not None and card.task != task:
        raise ImgclfError(
            f"the data of {run.path} has changed since training: its model is {card.task}, the data {task}"
        )


def new_run_dir(cfg: TrainConfig) -> Path:
    """The path of a new run under ``cfg.output`` (created later, once set-up succeeded); never an existing run."""
    name = cfg.name or f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.output) / name
    if (run_dir / CONFIG).exists():
        raise ImgclfError(f"run directory already exists: {run_dir} (use --resume {run_dir} or another --name)")
    return run_dir
