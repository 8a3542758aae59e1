"""Per-epoch history as JSON lines (one object per epoch) mirrored to TensorBoard scalars."""

import json
import os
from pathlib import Path

from imgclf.artifacts.files import HISTORY, TENSORBOARD
from imgclf.artifacts.runs import read_history
from imgclf.core.io import write_text

# keys of an epoch record that describe the machine (how long it took, with how many CPU threads), not what training
# computed: without them a resumed run's history is the uninterrupted run's
MACHINE_KEYS = ("epoch_seconds", "cpu_threads")


class History:
    """Append epoch records to ``history.jsonl`` and TensorBoard; drop records past a resume point."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = run_dir / HISTORY
        run_dir.mkdir(parents=True, exist_ok=True)  # a trainer handed a new folder logs before it checkpoints
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / TENSORBOARD))

    def truncate(self, last_epoch: int) -> None:
        """Keep only records of epochs ≤ ``last_epoch`` (those covered by the checkpoint being resumed)."""
        kept = [r for r in read_history(self.path) if r["epoch"] <= last_epoch]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict) -> None:
        """Append one epoch's record."""
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, int | float):
                    self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
