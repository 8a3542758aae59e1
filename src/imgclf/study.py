"""The whole comparison study in one command: train, evaluate and compare every run of a preset.

imgclf study                   # the reference study: simple_cnn, vgg10, resnet20, transfer at 96 and 224 px
imgclf study --quick           # the same pipeline with fewer epochs and images: a first look in minutes
imgclf study --preset my.yaml --set epochs=5
imgclf study --add speed94     # the reference study and one more row: the speed94 recipe from scratch

A preset (``src/imgclf/studies/*.yaml``) names its runs in study order, each a bundled recipe or config file
(``config:``) plus option overrides. Every run lives in ``OUTPUT/RUN``; running the study again continues where it
stopped: finished runs are kept, an interrupted one resumes from its last checkpoint, evaluation is redone only
when missing. The comparison (tables, figures, report.html) is written to ``OUTPUT/comparison``.
"""

import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from imgclf.artifacts.audits import audit_line, find_audit
from imgclf.artifacts.files import BEST_WEIGHTS, METRICS, SUMMARY
from imgclf.artifacts.runs import RunDir
from imgclf.config.build import build_config
from imgclf.config.files import coerce, config_values, load_config_file
from imgclf.config.options import AUTO_RESOLVES, RUNTIME_OPTIONS, TrainConfig, applies_to, field_types
from imgclf.core.device import select_device
from imgclf.core.errors import ImgclfError, shown, type_name
from imgclf.core.io import bundled_or_file, parse_yaml, read_yaml_file, write_json
from imgclf.data.sources import is_builtin
from imgclf.evaluation.evaluate import evaluate_run
from imgclf.report.compare import compare
from imgclf.report.reference import dataset_name
from imgclf.report.run_report import render_evaluation
from imgclf.training import distributed
from imgclf.training.run import train_run

STUDY_DIR = Path(__file__).resolve().parent / "studies"


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
        out[key] = coerce(key, parse_yaml(value, f"--set {key}"), "--set")
    return out


def study_configs(
    preset: str | Path, output: Path, overrides: dict, added: list[str] | tuple = ()
) -> dict[str, TrainConfig]:
    """The validated configuration of every run of ``preset``, in study order, then one run per ``added`` recipe
    (a bundled recipe's name or a config file; the run is named after it, with the preset's ``added_runs`` options)."""
    path = preset_path(preset)
    spec = read_yaml_file(path, "study preset")
    if not isinstance(spec, dict):
        raise ImgclfError(f"study preset {path} must hold a mapping with a 'runs' key, got {type_name(spec)}")
    runs = spec.get("runs")
    if not isinstance(runs, dict) or not runs:
        got = "no runs" if isinstance(runs, dict) else type_name(runs)
        raise ImgclfError(f"study preset {path} must have a 'runs' mapping of run name: options, got {got}")
    added_options = spec.get("added_runs") or {}  # options the preset gives every --add run (quick: fewer epochs)
    if not isinstance(added_options, dict):
        got = type_name(added_options)
        raise ImgclfError(f"study preset {path}: 'added_runs' must be a mapping of option: value, got {got}")
    runs, added_names = dict(runs), {}  # an added run's name → its recipe
    for recipe in added:
        name = Path(recipe).stem
        if name in runs:
            raise ImgclfError(f"--add {recipe}: the study already has a run named '{name}'")
        runs[name], added_names[name] = {"config": recipe, **added_options}, recipe
    configs = {}
    for name, options in runs.items():
        where = f"--add {added_names[name]}" if name in added_names else f"run {shown(name)} of study preset {path}"
        if not isinstance(name, str):
            raise ImgclfError(f"{where}: a run's name must be text, got {type_name(name)}")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ImgclfError(f"{where} must be a mapping of option: value, got {type_name(options)}")
        options = {str(k).replace("-", "_"): v for k, v in options.items()}
        try:
            file_values = {}
            if "config" in options:
                config = options.pop("config")
                if not isinstance(config, str) or not config:
                    raise ImgclfError(f"'config' must name a bundled recipe or a YAML file, got {shown(config)}")
                file_values = load_config_file(config)
            values = config_values(options, "options")
            # options a run's model does not take (e.g. img_size for a network from scratch) are not forced on it
            model = {**file_values, **values}.get("model", TrainConfig.model)
            applicable = {k: v for k, v in overrides.items() if applies_to(k, model)}
            configs[name] = build_config(file_values, {**values, **applicable, "name": name, "output": str(output)})
        except ImgclfError as exc:
            raise ImgclfError(f"{where}: {exc}") from None
    return configs


def same_computation(saved: TrainConfig, cfg: TrainConfig) -> bool:
    """True when a run's ``saved`` config and ``cfg`` train the same run (runtime-only options, and options its model
    does not take, aside; ``auto`` in ``cfg`` matches what it can resolve to)."""
    da, db = saved.to_dict(), cfg.to_dict()

    def same(k: str) -> bool:
        return da[k] == db[k] or (db[k] == "auto" and da[k] in AUTO_RESOLVES.get(k, ()))

    return all(same(k) for k in da if k not in RUNTIME_OPTIONS and applies_to(k, saved.model))


def warn_if_data_changed(run: RunDir, cfg: TrainConfig) -> None:
    """One warning line when a kept run's folder of images has changed since the run trained on it."""
    card = run.read_card()
    if card is None or is_builtin(cfg.data):
        return
    from imgclf.data.files import files_fingerprint

    if files_fingerprint(cfg.data, card.data_size, card.resize, cfg.label_format) != card.data_fingerprint:
        tqdm.write(
            f"imgclf: warning: {cfg.data} has changed since {run.path} was trained on it; the run is kept as it is "
            f"(delete {run.path} to train it again on the folder as it is now)",
            file=sys.stderr,
        )


def run_status(run: RunDir, cfg: TrainConfig) -> str:
    """What the study does with ``run``: train it, resume it, or keep it (finished); an error when the folder holds
    a run with other options."""
    if not run.exists():
        return "trained"
    if not same_computation(run.read_config(), cfg):
        raise ImgclfError(f"{run.path} holds a run with other options; delete it or choose another --output")
    if run.file(SUMMARY).is_file() and run.file(BEST_WEIGHTS).is_file():
        warn_if_data_changed(run, cfg)
        return "kept"
    return "resumed"


def run_study(
    preset: str | Path, output: str | Path, overrides: dict | None = None, added: list[str] | tuple = ()
) -> dict:
    """Train (or resume), evaluate and compare every run of ``preset`` (and the ``added`` recipes) under ``output``;
    returns the study record. Under torchrun every rank trains each run and rank 0 alone evaluates, compares and
    writes."""
    output = Path(output)
    configs = study_configs(preset, output, overrides or {}, added)
    record = {"preset": str(preset_path(preset)), "output": str(output), "runs": {}}
    main = distributed.is_main()
    start = time.perf_counter()
    for index, (name, cfg) in enumerate(configs.items(), 1):
        run = RunDir(output / name)
        distributed.say(f"== study run {index}/{len(configs)}: {name} ({cfg.model}) ==")
        run_start = time.perf_counter()
        distributed.setup(select_device(cfg.device))
        status = distributed.broadcast(run_status(run, cfg) if main else None)  # rank 0's view, after its writes
        if status != "kept":
            train_run(cfg, run.path, resume=status == "resumed")
        if not main:
            continue
        metrics = run.read_metrics() if status == "kept" and run.file(METRICS).is_file() else None
        if metrics is None or (cfg.tta and "tta" not in metrics):
            metrics = render_evaluation(evaluate_run(run.path, cfg.data_dir, cfg.device, tta=cfg.tta))
        record["dataset"] = dataset_name(metrics)
        record["runs"][name] = {
            "model": cfg.model,
            "status": status,
            "test_accuracy": metrics["test_accuracy"],
            **({"tta_test_accuracy": metrics["tta"]["test_accuracy"]} if "tta" in metrics else {}),
            **({"map": metrics["map"], "macro_f1": metrics["macro_f1"]} if "map" in metrics else {}),
            "wall_seconds": time.perf_counter() - run_start,
        }
        scores = f"test mAP {metrics['map']:.4f}, " if "map" in metrics else ""
        tqdm.write(f"{name}: {scores}test accuracy {metrics['test_accuracy']:.4f} ({status})")
    distributed.barrier()  # the other ranks wait for rank 0's last evaluation
    if not main:
        return record
    audited = find_audit(next(iter(configs.values())).data)
    notes = [audit_line(audited)] if audited else []
    compare([output / name for name in configs], output / "comparison", list(configs), notes)
    record["wall_seconds"] = time.perf_counter() - start
    write_json(output / "study.json", record)
    return record
