"""What several commands' parsers share: the options of :class:`TrainConfig` as flags, and common help texts."""

import argparse
import dataclasses

from imgclf.config.checks import flag
from imgclf.config.files import FINETUNE, load_config_file
from imgclf.config.options import GROUPS, TrainConfig, field_types
from imgclf.data.labelfile import LabelFormat

DATA_HELP = "cifar10, cifar100, a folder of images or a label file (.csv, .tsv, .jsonl)"
MOVED_HELP = "runs on a folder or label file: where it is now, if it moved"
LABEL_FORMAT_OPTIONS = tuple(f.name for f in dataclasses.fields(LabelFormat))  # explore reads label files too
ABSTAIN_OPTIONS = ("abstain", "abstain_score", "target_risk")  # evaluate fits the card's abstain rule again with them
RAW_HELP = (
    "probabilities not calibrated by the run's temperature (multi-label labels are still decided on calibrated ones)"
)


def add_config_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] = (), defaults: bool = False) -> None:
    """One flag per :class:`TrainConfig` field (``only``: those fields), under its group's heading in ``--help``;
    unset flags stay absent so config files can fill them (``defaults``: unset flags take the field's default)."""
    types, groups = field_types(), {name: parser.add_argument_group(f"{name} options") for name in GROUPS}
    finetune = load_config_file(FINETUNE)
    for f in dataclasses.fields(TrainConfig):
        if only and f.name not in only:
            continue
        name = flag(f.name)
        kind = types[f.name]
        default = f.metadata["cli_default"]
        if f.name in finetune and finetune[f.name] != default:
            default = f"{default}; timm models: {finetune[f.name]}"
        kwargs = dict(
            default=f.default if defaults else argparse.SUPPRESS, help=f"{f.metadata['help']} (default: {default})"
        )
        group = groups[f.metadata["group"]]
        if kind is bool:
            group.add_argument(name, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(name, type=kind, metavar=f.name.upper(), choices=f.metadata["choices"], **kwargs)
