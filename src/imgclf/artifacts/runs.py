"""The run directory: the one home of its file names, and a validating reader for each run file (the model card's
fields: ``card.py``).

```
RUN/config.yaml  history.jsonl  summary.json  metrics.json  model.json  best.safetensors  report.html
    model.onnx + model.parity.json (`imgclf export`)  model.int8.onnx + model.int8.parity.json (`export --int8`)
    benchmark.json (`imgclf benchmark`: each runtime and precision measured)
    split.json (folder data: each split's files)  data.json (the data's facts)  skipped.json (unreadable files)
    checkpoints/  figures/  tensorboard/  phase1/ phase2/ (transfer runs: each phase a run of its own)
```
Every reader turns a missing, damaged or foreign file into a one-line error naming it.
"""

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from imgclf.artifacts.card import ModelCard, require, task_of
from imgclf.artifacts.files import (
    BENCHMARK,
    BEST_WEIGHTS,
    CONFIG,
    DATA,
    HISTORY,
    LOCK,
    METRICS,
    MODEL_CARD,
    SKIPPED,
    SPLIT,
    SUMMARY,
    run_config,
)
from imgclf.artifacts.weights import add_metadata
from imgclf.config.files import load_config_file
from imgclf.config.options import TrainConfig
from imgclf.core.errors import ImgclfError
from imgclf.core.io import read_json, write_json, write_text
from imgclf.data.images import Splits
from imgclf.data.sources import is_builtin, load_splits
from imgclf.models.backbones import native_input_size


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
        return TrainConfig(**load_config_file(run_config(self.path))).validate(saved=True)

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

    # imgclf benchmark
    def read_benchmark(self) -> dict | None:
        """``benchmark.json``: each runtime × precision measured (None when the run was never benchmarked)."""
        path = self.file(BENCHMARK)
        if not path.is_file():
            return None
        record = require(read_json(path, "benchmark record"), {"weights_sha1": str, "rows": list}, str(path))
        for row in record["rows"]:
            require(row, {"name": str, "runtime": str, "file": str, "p50_ms": float}, f"{path} row")
        return record

    def write_benchmark(self, record: dict) -> None:
        write_json(self.file(BENCHMARK), record)

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


def run_splits(cfg: TrainConfig, lists: dict[str, list[str]] | None = None, card: ModelCard | None = None) -> Splits:
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
