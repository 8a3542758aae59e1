"""Start or resume one training run: the shared entry of ``imgclf train`` and ``imgclf study``.

The run's data is loaded here, from its options, and handed to the trainer. Before training starts the run directory
receives the data's facts and split, the model card and — last, since it marks a run directory — the config, so
bad input leaves nothing behind and an interrupted run always knows its split. A resumed run reads its split back
and checks that the data still has the classes its model was trained on.
"""

from pathlib import Path

import torch

from imgclf.artifacts.card import model_card
from imgclf.artifacts.runs import RunDir, check_card, run_splits
from imgclf.config.options import TrainConfig
from imgclf.core.device import select_device
from imgclf.data.images import Splits
from imgclf.data.scan import warn
from imgclf.models.backbones import check_weights_available
from imgclf.training import distributed
from imgclf.training.balance import class_balance
from imgclf.training.build import image_loaders, scratch_model
from imgclf.training.phases import scratch_phase
from imgclf.training.trainer import Trainer
from imgclf.training.transfer import TransferTrainer


def scratch_trainer(cfg: TrainConfig, run_dir: Path, splits: Splits) -> Trainer:
    """The one phase of a network from scratch on ``splits``, ready to fit into ``run_dir``."""
    device = distributed.setup(select_device(cfg.device))
    torch.manual_seed(cfg.seed)
    loaders = image_loaders(cfg, splits.train, splits.val, splits.mean, splits.std, device)
    model = scratch_model(cfg, splits, device)
    balance = class_balance(cfg, splits.train.labels, len(splits.classes))
    return Trainer(cfg, scratch_phase(cfg, run_dir, splits.side, balance), model, loaders)


def train_run(cfg: TrainConfig, run_dir: Path, resume: bool = False) -> dict:
    """Train ``cfg`` into ``run_dir`` (continuing its last checkpoint when ``resume``); returns the run summary."""
    run = RunDir(run_dir)
    distributed.setup(select_device(cfg.device))
    if cfg.is_transfer and cfg.pretrained and not cfg.weights:
        check_weights_available(cfg.model)  # before any data is prepared, for `train` and `study` alike
    with distributed.main_first():  # under torchrun rank 0 prepares the data (folder, download), the others read it
        card = run.read_card() if resume else None
        splits = run_splits(cfg, run.read_data_split(cfg) if resume else None, card)
    if resume:
        check_card(card, splits, run)
    return train_splits(cfg, run, splits, resume)


def train_splits(cfg: TrainConfig, run: RunDir, splits: Splits, resume: bool = False) -> dict:
    """Train ``cfg`` on ``splits`` (whatever their source) into ``run``; its summary. Writes the run's data facts,
    card and config first, so the run can be resumed, evaluated and loaded like any other."""
    main = distributed.is_main()
    if cfg.is_transfer:
        trainer = TransferTrainer(cfg, run.path, splits)
        card = model_card(cfg, splits, trainer.tm.image_size, trainer.tm.mean, trainer.tm.std)
    else:
        trainer = scratch_trainer(cfg, run.path, splits)
        card = model_card(cfg, splits, splits.side, splits.mean, splits.std)
    if main and (note := trainer.balance.note()):
        warn(note)
    if not main:  # rank 0 alone writes the run
        return trainer.fit(resume=resume)
    with run.lock():  # one process at a time writes a run
        if not resume:
            run.write_data(splits.lists, splits.info)
            run.write_card(card)
            run.write_config(cfg)
        summary = trainer.fit(resume=resume)
        card.engine = summary.get("engine")
        run.write_card(card)  # again, with how it was computed, now into the best weights' metadata too
    return summary
