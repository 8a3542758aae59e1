"""Calibration of the fully trained benchmark runs: ECE, MCE, NLL and Brier before and after temperature scaling
(temperature fitted on each run's validation split). Guo et al. 2017 report CIFAR-10 ResNet-110: ECE 4.6% → 0.83%.

    uv run python benchmarks/calibration.py benchmarks/runs/train_resnet20_seed0 benchmarks/runs/train_vgg10_seed0

Re-evaluates each run (`imgclf evaluate`) and writes benchmarks/results/calibration_RUN.json.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from imgclf.evaluation.evaluate import evaluate_run
from imgclf.report.run_report import render_evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        start = time.perf_counter()
        metrics = render_evaluation(evaluate_run(run_dir))
        before, after = metrics["calibration"], metrics["calibration_temperature_scaled"]
        name = run_dir.name.removeprefix("train_").removesuffix("_seed0")
        print(f"{name}: ECE {before['ece']:.2%} → {after['ece']:.2%} (T = {metrics['temperature']:.3f})")
        write_result(
            f"calibration_{name}",
            {
                "benchmark": "calibration",
                "model": metrics["model"],
                "run": str(run_dir),
                "command": f"uv run python benchmarks/calibration.py {run_dir}",
                "seed": 0,
                "wall_seconds": round(time.perf_counter() - start, 1),
                "test_accuracy": metrics["test_accuracy"],
                "temperature": metrics["temperature"],
                "ece_before": before["ece"],
                "ece_after": after["ece"],
                "calibration_before": before,
                "calibration_after": after,
            },
        )


if __name__ == "__main__":
    main()
