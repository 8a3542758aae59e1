"""Mean and spread over seeds of a recipe's full training runs (benchmarks/train_full.py results).

    for s in 1 2 3 4; do uv run python benchmarks/train_full.py speed94 --seed $s --tag seed$s; done
    uv run python benchmarks/seeds.py speed94    # reads train_speed94.json and train_speed94_seed*.json

Writes benchmarks/results/seeds_RECIPE.json: one row per run (model, seed, test_accuracy, tta_test_accuracy,
wall_seconds), then mean, sample standard deviation, min and max of the accuracies, and the median wall time.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, write_result

ROW_KEYS = ("model", "seed", "test_accuracy", "tta_test_accuracy", "wall_seconds", "train_seconds", "command")


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation, min and max of ``values``."""
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="bundled recipe whose train_RECIPE*.json results to summarise")
    args = parser.parse_args()
    files = [RESULTS / f"train_{args.recipe}.json", *sorted(RESULTS.glob(f"train_{args.recipe}_seed*.json"))]
    runs = [json.loads(f.read_text()) for f in files if f.is_file()]
    if not runs:
        raise SystemExit(f"no results train_{args.recipe}*.json in {RESULTS}")
    rows = sorted(({k: run.get(k) for k in ROW_KEYS} for run in runs), key=lambda row: row["seed"])
    if len({row["seed"] for row in rows}) != len(rows):
        raise SystemExit("two results of the same seed")
    record = {
        "benchmark": "seeds",
        "model": args.recipe,
        "command": command_line(),
        "seed": [row["seed"] for row in rows],
        "wall_seconds": round(statistics.median(row["wall_seconds"] for row in rows), 1),  # median per run
        "runs": len(rows),
        "test_accuracy": spread([row["test_accuracy"] for row in rows]),
        "rows": rows,
    }
    if all(row["tta_test_accuracy"] is not None for row in rows):
        record["tta_test_accuracy"] = spread([row["tta_test_accuracy"] for row in rows])
    for key in ("test_accuracy", "tta_test_accuracy"):
        if key in record:
            s = record[key]
            print(f"{key}: {s['mean']:.4f} ± {s['std']:.4f} (min {s['min']:.4f}, max {s['max']:.4f}) over {len(rows)}")
    print("wrote", write_result(f"seeds_{args.recipe}", record))


if __name__ == "__main__":
    main()
