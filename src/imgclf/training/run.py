"""Start or resume one training run: the shared entry of ``imgclf train`` and ``imgclf study``."""

from pathlib import Path

import yaml

from imgclf.config import TrainConfig
from imgclf.training.checkpoint import atomic_write
from imgclf.training.trainer import Trainer
from imgclf.training.transfer import TransferTrainer


def train_run(cfg: TrainConfig, run_dir: Path, resume: bool = False) -> dict:
    """Train ``cfg`` into ``run_dir`` (continuing its last checkpoint when ``resume``); returns the run summary.
    Data and model are built before anything is written, so bad input leaves no run directory behind."""
    trainer = TransferTrainer(cfg, run_dir) if cfg.is_transfer else Trainer(cfg, run_dir)
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        atomic_write(run_dir / "config.yaml", lambda tmp: tmp.write_text(config_text))
    return trainer.fit(resume=resume)
