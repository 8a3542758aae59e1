"""Options know where they apply: every option carries its group, the models it takes and whether it changes what a
run computes; the help, validation and `study --set` all read that one place."""

import dataclasses

import pytest

from imgclf.cli import build_parser
from imgclf.config.options import ALL, GROUPS, RUNTIME_OPTIONS, SCRATCH, TIMM, TrainConfig, applies_to
from imgclf.core.errors import ImgclfError
from imgclf.study import study_configs

FIELDS = dataclasses.fields(TrainConfig)
# a valid value, other than the default, for every option that applies to one kind of model only
ONE_KIND = {
    "pretrained": False,
    "weights": "v2b0.safetensors",
    "img_size": 64,
    "dropout": 0.3,
    "drop_path": 0.1,
    "head_epochs": 2,
    "head_lr": 0.01,
    "unfreeze": "3",
    "layer_decay": 0.8,
    "cache": False,
    "cache_dir": "activations",
    "feature_shift": 1,
    "tta_shift": 1,
}


def test_every_option_has_a_group_help_and_the_models_it_applies_to():
    for f in FIELDS:
        assert f.metadata["group"] in GROUPS and f.metadata["help"], f.name
        assert f.metadata["applies"] in (ALL, SCRATCH, TIMM) and isinstance(f.metadata["runtime"], bool), f.name
    assert {f.name for f in FIELDS if f.metadata["applies"] != ALL} == set(ONE_KIND)
    assert RUNTIME_OPTIONS == {f.name for f in FIELDS if f.metadata["runtime"]} >= {"device", "threads", "output"}


@pytest.mark.parametrize("name", sorted(ONE_KIND))
def test_an_option_is_refused_on_the_models_it_does_not_apply_to(name):
    kind = next(f.metadata["applies"] for f in FIELDS if f.name == name)
    takes, refuses = ("tf_efficientnet_lite0", "resnet20") if kind == TIMM else ("resnet20", "tf_efficientnet_lite0")
    assert applies_to(name, takes) and not applies_to(name, refuses)
    TrainConfig(model=takes, **{name: ONE_KIND[name]}).validate()
    words = "applies to timm models" if kind == TIMM else "applies to networks trained from scratch"
    with pytest.raises(ImgclfError, match=f"--{name.replace('_', '-')} {words}"):
        TrainConfig(model=refuses, **{name: ONE_KIND[name]}).validate()
    TrainConfig(model=refuses, **{name: ONE_KIND[name]}).validate(saved=True)  # a finished run's config still reads


def test_study_set_gives_each_run_only_the_options_its_model_takes(tmp_path):
    overrides = {"dropout": 0.35, "img_size": 64, "tta_shift": 1, "seed": 3}
    configs = study_configs("quick", tmp_path, overrides)
    for cfg in configs.values():
        transfer = cfg.is_transfer
        assert cfg.seed == 3
        assert (cfg.dropout, cfg.img_size) == ((0.35, 64) if transfer else (0.2, 0))
        assert cfg.tta_shift == (0 if transfer else 1)
    assert {c.is_transfer for c in configs.values()} == {True, False}


def test_train_help_lists_every_option_under_its_group():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    groups = {g.title: {a.dest for a in g._group_actions} for g in train._action_groups}
    for f in FIELDS:
        assert f.name in groups[f"{f.metadata['group']} options"], f.name
