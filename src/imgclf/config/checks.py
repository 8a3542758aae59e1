"""Checks of option values, each a one-line error naming the flag: types, ranges, run names."""

import math
import os
from collections.abc import Mapping
from typing import Any

from imgclf.core.errors import ImgclfError, shown

MAX_BATCH_SIZE = 65536
MAX_IMAGE_SIDE = 1024  # a larger side does not fit in memory for a dataset of images (or in a GPU for a batch)
MAX_RUN_NAME_BYTES = 200


def flag(name: str) -> str:
    """The command-line spelling of config field ``name``, e.g. ``--label-smoothing``."""
    return "--" + name.replace("_", "-")


NON_NEGATIVE = ("lr", "head_lr", "head_epochs", "img_size", "data_size", "dropout", "drop_path", "layer_decay")
NON_NEGATIVE += ("weight_decay", "warmup_epochs", "mixup", "cutmix", "cutout", "feature_shift", "progressive_size")
NON_NEGATIVE += ("train_subset", "test_subset", "early_stopping", "reduce_lr_patience", "workers", "threads")
NON_NEGATIVE += ("tta_shift", "checkpoint_every")
FRACTIONS = ("lr_start", "lr_end", "progressive_fraction")  # in [0, 1]
BELOW_ONE = ("momentum", "label_smoothing", "val_fraction", "test_fraction", "ema_decay")  # in [0, 1)


# options of single-label data only, and what multi-label data uses instead
SINGLE_LABEL_ONLY = {
    "balance": (("weights", "sampler", "logit-adjust"), "trains with --balance none"),
    "monitor": (("val_acc", "val_balanced_acc"), "watches val_map"),
}


def check_task_options(task: str, balance: str, monitor: str) -> None:
    """A one-line error for a balance mode or monitor that does not fit ``task`` (single or multilabel; ``auto`` is
    checked again once the data is read and its task known)."""
    if task == "multilabel":
        for name, value in (("balance", balance), ("monitor", monitor)):
            values, instead = SINGLE_LABEL_ONLY[name]
            if value in values:
                raise ImgclfError(f"{flag(name)} {value} is for single-label data (multi-label data {instead})")
    if task == "single" and monitor == "val_map":
        raise ImgclfError("--monitor val_map is for multi-label data")


def check_abstain_option(abstain: str, target_risk: float, task: str) -> None:
    """A one-line error for an ``--abstain`` other than off, auto or a probability (a fixed threshold is always on
    the top class's probability), a ``--target-risk`` outside (0, 1), or abstaining on multi-label data (each class
    there has its own threshold)."""
    if abstain not in ("off", "auto"):
        try:
            threshold = float(abstain)
        except ValueError:
            threshold = math.nan
        if not 0 <= threshold <= 1:
            raise ImgclfError(f"--abstain must be off, auto or a probability from 0 to 1, got {shown(abstain)}")
    if not 0 < target_risk < 1:
        raise ImgclfError(f"--target-risk must be in (0, 1), got {target_risk}")
    if task == "multilabel" and abstain != "off":
        raise ImgclfError(
            "--abstain is for single-label data (a multi-label model decides each class at its threshold)"
        )


def check_ranges(v: Mapping[str, Any]) -> None:
    """A one-line error for the first value outside its range, or options that cannot go together (``v``: a
    config's values by option name)."""
    from imgclf.data.sources import is_builtin

    if not 1 <= v["batch_size"] <= MAX_BATCH_SIZE:
        raise ImgclfError(f"--batch-size must be a positive integer up to {MAX_BATCH_SIZE}, got {v['batch_size']}")
    if v["epochs"] < 0 or (v["epochs"] == 0 and not v["head_epochs"]):
        raise ImgclfError(f"--epochs must be a positive integer, got {v['epochs']}")
    if not 0 <= v["seed"] < 2**32:
        raise ImgclfError(f"--seed must be in [0, 2**32), got {v['seed']}")
    for name in NON_NEGATIVE:
        if v[name] < 0:
            raise ImgclfError(f"{flag(name)} must not be negative, got {v[name]}")
    for name in FRACTIONS:
        if not 0 <= v[name] <= 1:
            raise ImgclfError(f"{flag(name)} must be in [0, 1], got {v[name]}")
    if v["lookahead"] and v["ema_decay"]:
        raise ImgclfError("--lookahead and --ema-decay each average the weights; choose one")
    if v["tta_shift"] > 8:
        raise ImgclfError(f"--tta-shift must be at most 8 pixels, got {v['tta_shift']}")
    for name in ("dropout", "drop_path"):
        if v[name] >= 1:
            raise ImgclfError(f"{name} must be in [0, 1), got {v[name]}")  # tests match this spelling
    for name in BELOW_ONE:
        if not 0 <= v[name] < 1:
            raise ImgclfError(f"{flag(name)} must be in [0, 1), got {v[name]}")
    for name in ("img_size", "data_size"):
        if v[name] > MAX_IMAGE_SIDE:
            raise ImgclfError(
                f"{flag(name)} must be at most {MAX_IMAGE_SIDE}, got {v[name]}: "
                "images of that side cannot fit in memory"
            )
    if 0 < v["data_size"] < 32:
        raise ImgclfError(f"--data-size must be at least 32 (or 0: the default), got {v['data_size']}")
    if not is_builtin(v["data"]) and v["val_fraction"] + v["test_fraction"] >= 1:
        raise ImgclfError(
            f"--val-fraction + --test-fraction must be below 1 (no training images would be left), "
            f"got {v['val_fraction']} + {v['test_fraction']}"
        )
    if not 0 < v["reduce_lr_factor"] <= 1:
        raise ImgclfError(f"--reduce-lr-factor must be in (0, 1], got {v['reduce_lr_factor']}")
    if v.get("monitor") == "last" and (v["early_stopping"] or v["reduce_lr_patience"]):
        raise ImgclfError(
            "--monitor last keeps the final epoch: --early-stopping and --reduce-lr-patience need a metric"
        )
    if v["val_fraction"] == 0 and (v["early_stopping"] or v["reduce_lr_patience"]):
        raise ImgclfError("early stopping and reduce-LR-on-plateau need a validation split (--val-fraction > 0)")


def check_value(name: str, value, kind: type, optional: bool) -> None:
    """A one-line error when config field ``name`` (of type ``kind``, null allowed if ``optional``) holds a value of
    the wrong type, nan/inf or a NUL character."""
    if value is None:
        if optional:
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
