"""Phase-2 variants of a transfer recipe on a warm activation cache, compared on validation accuracy only.

    uv run python benchmarks/transfer_variants.py lite2_224 --cache-dir benchmarks/runs/cache_study_reference \
        --variant droppath02 "--drop-path 0.2" --variant shift1 "--feature-shift 1"

Each variant is one `imgclf train --config RECIPE FLAGS --no-evaluate` run in benchmarks/runs/exp_NAME_seedS; a
finished run directory is read, not rerun, and an interrupted one is resumed. The test split is never read: this is
recipe selection, so it uses the validation split. The warm cache makes a variant cost phase 1 and phase 2 only
(~35 min for lite2_224); no wall time here is end to end — train_full.py measures that for the chosen recipe.
Writes benchmarks/results/variants_RECIPE.json (each variant's flags, saved config and per-epoch history).
"""

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from imgclf.artifacts.files import SUMMARY
from imgclf.artifacts.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent


def run_variant(recipe: str, name: str, flags: str, cache_dir: Path, seed: int) -> dict:
    """Train (or resume, or read) one variant and return its record."""
    run_dir = ROOT / "benchmarks" / "runs" / f"exp_{name}_seed{seed}"
    if (run_dir / "config.yaml").exists():
        command = ["imgclf", "train", "--resume", str(run_dir), "--no-progress", "--no-evaluate"]
    else:
        command = ["imgclf", "train", "--config", recipe, *shlex.split(flags), "--seed", str(seed)]
        command += ["--cache-dir", str(cache_dir), "--output", str(run_dir.parent), "--name", run_dir.name]
        command += ["--no-progress", "--no-evaluate"]
    if not RunDir(run_dir).file(SUMMARY).exists():
        subprocess.run(command, cwd=ROOT, check=True)
    summary = RunDir(run_dir).read_summary()
    history = RunDir(run_dir).read_history()
    phase2 = [row for row in history if row.get("phase") == 2]
    return {
        "flags": flags,
        "best_val_acc": summary.get("best_val_acc"),
        "best_epoch": summary["best_epoch"],
        "phase2_val_acc": [round(row["val_acc"], 4) for row in phase2],
        "phase2_train_acc": [round(row["train_acc"], 4) for row in phase2],
        "phase2_epoch_seconds": [round(row["epoch_seconds"], 1) for row in phase2],
        "config": (run_dir / "config.yaml").read_text(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="bundled recipe (src/imgclf/configs/NAME.yaml)")
    parser.add_argument("--cache-dir", type=Path, required=True, help="a warm activation cache of the recipe")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "FLAGS"), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="recorded with the results, e.g. where the baseline's curve is")
    args = parser.parse_args()
    variants = {name: run_variant(args.recipe, name, flags, args.cache_dir, args.seed) for name, flags in args.variant}
    for name, record in variants.items():
        print(f"{name:<16} val {' / '.join(f'{v:.2%}' for v in record['phase2_val_acc'])}  ({record['flags']})")
    command = ["python", "benchmarks/transfer_variants.py", *sys.argv[1:]]
    path = write_result(
        f"variants_{args.recipe}",
        {
            "benchmark": "transfer_variants",
            "model": args.recipe,
            "command": "uv run " + shlex.join(command),
            "seed": args.seed,
            "wall_seconds": None,  # variants share a warm cache and may be resumed: see phase2_epoch_seconds
            "note": args.note,
            "variants": variants,
        },
    )
    print("wrote", path)


if __name__ == "__main__":
    main()
