"""Start or resume one training run: the shared entry of ``imgclf train`` and ``imgclf study``.

The run's data is loaded here, from its options, and handed to the trainer; the run directory receives the config,
the split (folder data), the data's facts and the model card before training starts, so bad input leaves nothing.
"""

from pathlib import Path

from imgclf.config import TrainConfig
from imgclf.data.datasets import Splits, is_builtin, load_splits
from imgclf.runs import ModelCard, RunDir


def data_side(cfg: TrainConfig) -> int:
    """The side images are stored at: ``--data-size``, else a folder's images at a transfer backbone's input side;
    0 leaves the source's own default (CIFAR's 32 px, a folder's 32 px for networks from scratch)."""
    if cfg.data_size or not cfg.is_transfer or is_builtin(cfg.data):
        return cfg.data_size
    from imgclf.models.backbones import native_input_size

    return cfg.img_size or native_input_size(cfg.model)


def run_splits(cfg: TrainConfig, lists: dict[str, list[str]] | None = None) -> Splits:
    """The data of a run with options ``cfg`` (``lists``: a folder run's saved split, used exactly)."""
    return load_splits(
        cfg.data,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        train_subset=cfg.train_subset,
        test_subset=cfg.test_subset,
        side=data_side(cfg),
        resize=cfg.resize,
        data_dir=cfg.data_dir,
        download=cfg.download or None,
        prepare_dir=cfg.prepare_dir,
        workers=cfg.workers,
        progress=cfg.progress,
        lists=lists,
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
        data=str(Path(cfg.data).expanduser().resolve()) if not is_builtin(cfg.data) else cfg.data,
        data_fingerprint=splits.fingerprint,
        config=cfg.to_dict(),
    )


def train_run(cfg: TrainConfig, run_dir: Path, resume: bool = False) -> dict:
    """Train ``cfg`` into ``run_dir`` (continuing its last checkpoint when ``resume``); returns the run summary."""
    from imgclf.training.trainer import Trainer
    from imgclf.training.transfer import TransferTrainer

    run = RunDir(run_dir)
    splits = run_splits(cfg, run.read_split() if resume else None)
    trainer = TransferTrainer(cfg, run.path, splits) if cfg.is_transfer else Trainer(cfg, run.path, splits)
    card = model_card(cfg, splits, trainer.input_size, trainer.mean, trainer.std)
    if not resume:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(cfg)
        run.write_data(splits.lists, splits.info)
    summary = trainer.fit(resume=resume)
    run.write_card(card)
    return summary
