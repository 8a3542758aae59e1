"""Full CIFAR-10 training runs of a bundled recipe, timed end to end (process start to test accuracy), cold cache.

    uv run python benchmarks/train_full.py resnet20            # bundled recipe src/imgclf/configs/resnet20.yaml
    uv run python benchmarks/train_full.py vgg10 --tag try2 -- --epochs 40   # flags after -- go to imgclf train

    uv run python benchmarks/train_full.py lite2_224           # transfer: activation cache starts empty
    uv run python benchmarks/train_full.py resnet20 --tag folder --benchmark train_folder \
        --compare-to train_resnet20 -- --data benchmarks/data/cifar10-jpeg   # the same recipe on a JPEG folder
    uv run python benchmarks/train_full.py no-flag --tag before --benchmark no_flag \
        -- --data benchmarks/data/cifar10-jpeg     # `imgclf train --data DIR`: no model, no recipe

Targets (2-core CPU): simple_cnn ≥ 0.75, vgg10 ≥ 0.88, resnet20 ≥ 0.9125 test accuracy, ResNet-20 ≤ 20 min;
lite2_224 ≥ 0.960 and lite2_96 ≥ 0.930, each ≤ 60 min.
Writes benchmarks/results/train_MODEL[_TAG].json; paths in its command are relative to the repository.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from imgclf.artifacts.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="bundled recipe (src/imgclf/configs/NAME.yaml), or no-flag: none at all")
    parser.add_argument("--tag", default="", help="suffix of the result file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--benchmark", default="train_full", help="the result's benchmark name")
    parser.add_argument("--compare-to", metavar="RESULT", help="a result file name whose test accuracy to compare to")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])  # everything after -- goes to `imgclf train` as it is
    args.extra = argv[split + 1 :]
    no_flag = args.model == "no-flag"
    name = ("no_flag" if no_flag else f"train_{args.model}") + (f"_{args.tag}" if args.tag else "")
    run_dir = Path("benchmarks") / "runs" / f"{name}_seed{args.seed}"  # relative to the repository
    cache_dir = run_dir.parent / f"cache_{run_dir.name}"
    prepare_dir = run_dir.parent / f"prepared_{run_dir.name}"
    for path in (ROOT / run_dir, ROOT / cache_dir, ROOT / prepare_dir):  # a cold start: nothing cached
        if path.exists():
            shutil.rmtree(path)
    command = [
        "imgclf",
        "train",
        *([] if no_flag else ["--config", args.model]),
        "--seed",
        str(args.seed),
        "--output",
        str(run_dir.parent),
        "--name",
        run_dir.name,
        *([] if no_flag else ["--cache-dir", str(cache_dir)]),  # no-flag: no option a from-scratch run refuses
        "--prepare-dir",
        str(prepare_dir),
        "--no-progress",
        *args.extra,
    ]
    env = dict(os.environ, HOME=str(ROOT / cache_dir)) if no_flag else None  # no-flag: its caches start empty too
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env=env)
    wall = time.perf_counter() - start
    run_dir = ROOT / run_dir
    metrics = RunDir(run_dir).read_metrics()
    summary = RunDir(run_dir).read_summary()
    history = RunDir(run_dir).read_history()
    compared = {}
    if args.compare_to:
        native = json.loads((ROOT / "benchmarks" / "results" / f"{args.compare_to}.json").read_text())
        compared = {
            "compared_to": args.compare_to,
            "compared_test_accuracy": native["test_accuracy"],
            "difference_points": round((metrics["test_accuracy"] - native["test_accuracy"]) * 100, 2),
        }
    record = {
        "benchmark": args.benchmark,
        "model": summary["model"] if no_flag else args.model,
        "command": "uv run " + shlex.join(command),
        "seed": args.seed,
        "wall_seconds": round(wall, 1),
        "test_accuracy": metrics["test_accuracy"],
        "test_loss": metrics["test_loss"],
        **({"tta_test_accuracy": metrics["tta"]["test_accuracy"]} if "tta" in metrics else {}),
        "best_val_acc": summary.get("best_val_acc"),
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "train_seconds": round(summary["train_seconds"], 1),
        "parameters": summary["parameters"],
        "precision": summary["precision"],
        "config": (run_dir / "config.yaml").read_text(),
        **compared,
        "history": history,
        "phases": summary.get("phases"),
    }
    print(f"{args.model}: test accuracy {metrics['test_accuracy']:.4f} in {wall / 60:.1f} min wall")
    print("wrote", write_result(name, record))


if __name__ == "__main__":
    main()
