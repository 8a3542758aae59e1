"""The whole comparison study in one command: train, evaluate and compare every run of a preset.

imgclf study                   # the reference study: simple_cnn, vgg10, resnet20, transfer at 96 and 224 px
imgclf study --quick           # the same pipeline with fewer epochs and images: a first look in minutes
imgclf study --preset my.yaml --set epochs=5

A preset (``src/imgclf/studies/*.yaml``) names its runs in study order, each a bundled recipe or config file
(``config:``) plus option overrides. Every run lives in ``OUTPUT/RUN``; running the study again continues where it
stopped: finished runs are kept, an interrupted one resumes from its last checkpoint, evaluation is redone only
when missing. The comparison (tables, figures, report.html) is written to ``OUTPUT/comparison``.
"""

import json
import time
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from imgclf.config import TrainConfig, build_config, bundled_or_file, coerce, field_types, load_config_file
from imgclf.errors import ImgclfError
from imgclf.evaluation.evaluate import evaluate_run, load_run_config
from imgclf.report.compare import compare
from imgclf.training.checkpoint import atomic_write
from imgclf.training.run import train_run

STUDY_DIR = Path(__file__).resolve().parent / "studies"
# options that only timm models take: study-wide overrides skip the from-scratch runs
TRANSFER_ONLY = {"pretrained", "weights", "img_size", "head_epochs", "head_lr", "unfreeze", "layer_decay", "drop_path"}
# options that do not change what a run computes: a finished run stays valid when they differ
RUNTIME_OPTIONS = {"progress", "tensorboard", "data_dir", "device", "evaluate", "output", "cache_dir", "compile", "tta"}


def preset_path(name_or_path: str | Path) -> Path:
    """A study preset's path: an existing file, or the name of a bundled preset."""
    return bundled_or_file(name_or_path, STUDY_DIR, "study preset")


def parse_overrides(pairs: list[str]) -> dict:
    """``KEY=VALUE`` strings (YAML values) as typed config options, with one-line errors."""
    known, out = field_types(), {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ImgclfError(f"--set expects KEY=VALUE with a config key, got '{pair}'")
        out[key] = coerce(key, yaml.safe_load(value), "--set")
    return out


def study_configs(preset: str | Path, output: Path, overrides: dict) -> dict[str, TrainConfig]:
    """The validated configuration of every run of ``preset``, in study order."""
    path = preset_path(preset)
    spec = yaml.safe_load(path.read_text()) or {}
    runs = spec.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise ImgclfError(f"study preset {path} must have a 'runs' mapping of run name: options")
    configs = {}
    for name, options in runs.items():
        options = dict(options or {})
        file_values = load_config_file(options.pop("config")) if "config" in options else {}
        for key in options:
            if key not in field_types():
                raise ImgclfError(f"unknown config key '{key}' for run '{name}' in {path}")
        values = {k: coerce(k, v, str(path)) for k, v in options.items()}
        # options a run cannot take (e.g. img_size for a from-scratch network) are not forced on it
        applicable = {
            k: v for k, v in overrides.items() if k not in TRANSFER_ONLY or not _is_scratch(file_values, values)
        }
        configs[name] = build_config(file_values, {**values, **applicable, "name": name, "output": str(output)})
    return configs


def _is_scratch(file_values: dict, values: dict) -> bool:
    from imgclf.models import MODELS

    return {**file_values, **values}.get("model", TrainConfig.model) in MODELS


def same_computation(a: TrainConfig, b: TrainConfig) -> bool:
    """True when two configs train the same run (runtime-only options aside)."""
    da, db = a.to_dict(), b.to_dict()
    return all(da[k] == db[k] for k in da if k not in RUNTIME_OPTIONS)


def run_study(preset: str | Path, output: str | Path, overrides: dict | None = None) -> dict:
    """Train (or resume), evaluate and compare every run of ``preset`` under ``output``; returns the study record."""
    output = Path(output)
    configs = study_configs(preset, output, overrides or {})
    record = {"preset": str(preset_path(preset)), "output": str(output), "runs": {}}
    start = time.perf_counter()
    for index, (name, cfg) in enumerate(configs.items(), 1):
        run_dir = output / name
        tqdm.write(f"== study run {index}/{len(configs)}: {name} ({cfg.model}) ==")
        run_start = time.perf_counter()
        status = "trained"
        if (run_dir / "config.yaml").is_file():
            saved = load_run_config(run_dir)
            if not same_computation(saved, cfg):
                raise ImgclfError(f"{run_dir} holds a run with other options; delete it or choose another --output")
            if (run_dir / "summary.json").is_file() and (run_dir / "best.safetensors").is_file():
                status = "kept"
            else:
                train_run(cfg, run_dir, resume=True)
                status = "resumed"
        else:
            train_run(cfg, run_dir)
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if status == "kept" and metrics_file.is_file() else None
        if metrics is None or (cfg.tta and "tta" not in metrics):
            metrics = evaluate_run(run_dir, cfg.data_dir, cfg.device, tta=cfg.tta)
        record["runs"][name] = {
            "model": cfg.model,
            "status": status,
            "test_accuracy": metrics["test_accuracy"],
            **({"tta_test_accuracy": metrics["tta"]["test_accuracy"]} if "tta" in metrics else {}),
            "wall_seconds": time.perf_counter() - run_start,
        }
        tqdm.write(f"{name}: test accuracy {metrics['test_accuracy']:.4f} ({status})")
    compare([output / name for name in configs], output / "comparison", list(configs))
    record["wall_seconds"] = time.perf_counter() - start
    atomic_write(output / "study.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
    return record
