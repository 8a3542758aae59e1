"""Training speed beside other processes: ResNet-20 alone and beside competing runs, with imgclf's thread policy
(--threads 0: the cores other processes leave free) and with a fixed thread per core (what PyTorch does by default).

    uv run python benchmarks/contention.py                 # 10,000 images, 1 epoch per run, 2 rounds

Each case starts its processes together (the same `imgclf train` command, each its own run) and reads the measured
run's training img/s from its summary; alone and contended cases alternate within each round, and the median over
rounds is reported. Slowdown = alone img/s / contended img/s of the same policy; a fair share of 2 cores between
2 processes is 2×. Writes benchmarks/results/contention.json (rows with benchmark "contention").
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, write_result

from imgclf.artifacts.runs import RunDir

REPO = Path(__file__).resolve().parent.parent
CORES = len(os.sched_getaffinity(0))
# case → (threads of the measured run, threads of each competitor); 0: imgclf's policy
CASES = {
    "alone, imgclf policy": (0, []),
    "beside one identical run, imgclf policy": (0, [0]),
    "alone, a thread per core": (CORES, []),
    "beside one identical run, a thread per core": (CORES, [CORES]),
    "imgclf policy beside a run with a thread per core": (0, [CORES]),
    "beside two identical runs, imgclf policy": (0, [0, 0]),
}


def run_case(threads: int, competitors: list[int], args: argparse.Namespace, folder: Path) -> float:
    """Start the measured run and its competitors together; the measured run's training img/s."""
    shutil.rmtree(folder, ignore_errors=True)
    processes = []
    for index, count in enumerate([threads, *competitors]):
        command = [sys.executable, "-m", "imgclf", "train", "--model", "resnet20", "--epochs", "1"]
        command += ["--train-subset", str(args.images), "--val-fraction", "0.02", "--batch-size", "128"]
        command += ["--no-evaluate", "--no-progress", "--no-tensorboard", "--device", "cpu"]
        command += ["--output", str(folder), "--name", f"run{index}", "--threads", str(count)]
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, error = process.communicate()
        if process.returncode != 0:
            sys.exit(f"a run failed:\n{error[-2000:]}")
    summary = RunDir(folder / "run0").read_summary()
    return summary["num_train"] / summary["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "runs" / "contention"))
    args = parser.parse_args()
    os.environ.pop("OMP_NUM_THREADS", None)  # each run's --threads decides
    start = time.perf_counter()
    speeds = {case: [] for case in CASES}
    for number in range(args.rounds):
        for case, (threads, competitors) in CASES.items():
            speeds[case].append(run_case(threads, competitors, args, Path(args.output) / "case"))
            print(f"round {number + 1}: {case}: {speeds[case][-1]:,.0f} img/s", flush=True)
    median = {case: statistics.median(values) for case, values in speeds.items()}
    rows = []
    for case, (threads, competitors) in CASES.items():
        if not competitors:
            continue
        alone = median["alone, imgclf policy" if threads == 0 else "alone, a thread per core"]
        rows.append(
            {
                "benchmark": "contention",
                "model": "resnet20",
                "case": case,
                "threads": "imgclf policy" if threads == 0 else threads,
                "competitor_threads": ["imgclf policy" if c == 0 else c for c in competitors],
                "alone_images_per_second": round(alone, 1),
                "contended_images_per_second": round(median[case], 1),
                "slowdown": round(alone / median[case], 2),
                "runs": [round(v, 1) for v in speeds[case]],
            }
        )
    record = {
        "benchmark": "contention",
        "model": "resnet20",
        "command": command_line(),
        "seed": 0,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "images": args.images,
        "rounds": args.rounds,
        "cores": CORES,
        "alone": {case: [round(v, 1) for v in speeds[case]] for case, (_, c) in CASES.items() if not c},
        "rows": rows,
    }
    print(json.dumps(rows, indent=2))
    print(write_result("contention", record))


if __name__ == "__main__":
    main()
