"""The model card (RUN/model.json): what a trained model needs to be used — its classes, input and preprocessing,
where its data came from, and the decisions fitted on the validation split (temperature, multi-label thresholds, the
abstain rule) — with a validating reader for its JSON form."""

import dataclasses
import math
from dataclasses import dataclass, field

from imgclf.config.checks import MAX_IMAGE_SIDE
from imgclf.config.files import config_values
from imgclf.config.options import TrainConfig
from imgclf.core.errors import ImgclfError, shown
from imgclf.data.images import Splits
from imgclf.data.multilabel import is_multilabel
from imgclf.data.policies import ABSTAIN_SCORES, RESIZE_POLICIES
from imgclf.models import MODELS
from imgclf.models.transfer import BUILD_OPTIONS, architecture


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
    abstain: dict | None = None  # answer "unknown" below a score threshold: score, threshold, target_risk, validation
    quantization: dict | None = None  # an int8 ONNX file's card: how it was quantized and what its gate measured

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


# the card's own since issue 27 (task and thresholds since multi-label, issue 28; abstain since issue 30)
INFERENCE_FIELDS = ("architecture", "precision", "channels_last", "tta_shift", "task", "thresholds", "abstain")
INFERENCE_FIELDS += ("quantization",)


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
        "abstain": data.get("abstain"),
        "quantization": data.get("quantization"),
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
    check_abstain(fields["abstain"], fields["task"], source)
    if fields["quantization"] is not None and not isinstance(fields["quantization"], dict):
        raise ImgclfError(f"{source}: 'quantization' must be a JSON object or null")
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


def check_abstain(rule: object, task: object, source: str) -> None:
    """A one-line error for an abstain rule that is not null or an object naming a known score, a threshold (a
    probability's in [0, 1]) and a target risk in (0, 1) or null, on a single-label model."""
    if rule is None:
        return
    require(rule, {"score": str, "threshold": float}, f"{source} abstain")
    if task != "single":
        raise ImgclfError(f"{source}: 'abstain' is for single-label models")
    if rule["score"] not in ABSTAIN_SCORES:
        raise ImgclfError(
            f"{source}: abstain 'score' must be one of {', '.join(ABSTAIN_SCORES)}, got {shown(rule['score'])}"
        )
    if rule["score"] == "probability" and not 0 <= rule["threshold"] <= 1:
        raise ImgclfError(f"{source}: abstain 'threshold' must be a probability from 0 to 1")
    target = rule.get("target_risk")
    if target is not None and not (is_number(target) and 0 < target < 1):
        raise ImgclfError(f"{source}: abstain 'target_risk' must be a number in (0, 1) or null")


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
