"""int8 against fp32 and bf16 for one finished run: test accuracy and images/s of each runtime × precision.

    uv run python benchmarks/int8.py benchmarks/runs/resnet20_e10 --rounds 5

Rows are `imgclf benchmark`'s (PyTorch fp32 and bf16 with BatchNorm folded, onnxruntime fp32 ``model.onnx`` and int8
``model.int8.onnx``, and OpenVINO's fp32, bf16 and int8 of the same files where it is installed); the exports are
made first where the run lacks them (the int8 one behind its validation gate). Each row is scored once on the run's
test split (all of it, or ``--test-images`` spread over it; after the gate, which reads validation only), then timed
in ``--rounds`` rounds, the rows taking turns within a round: images/s at ``--batch-size`` (about a second each) and
p50 at batch 1. Medians over rounds; the int8 ratios are over onnxruntime fp32 and over the fastest PyTorch row, from
the same rounds (``openvino_…`` keys: OpenVINO's int8 row).
Writes benchmarks/results/int8_MODEL.json (benchmark "int8").
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnxruntime
from common import command_line, write_result

from imgclf.artifacts.files import BEST_WEIGHTS
from imgclf.artifacts.runs import RunDir
from imgclf.core.onnx import openvino_version
from imgclf.evaluation.benchmark import (
    VALIDATION_IMAGES,
    ensure_exports,
    images_per_second,
    latency_ms,
    row_predictors,
)
from imgclf.inference.export import located_splits
from imgclf.inference.load import run_card, weights_digest
from imgclf.inference.options import MAX_DROP
from imgclf.inference.quantize import gate_accuracy, spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--name", help="result file suffix (default: the run's model)")
    parser.add_argument("--test-images", type=int, default=0, help="score on this many spread test images (0: all)")
    args = parser.parse_args()
    start = time.perf_counter()
    run = RunDir(args.run_dir)
    cfg, card = run.read_config(), run_card(run)
    splits = located_splits(run, cfg, card, None, None)
    digest = weights_digest(run.file(BEST_WEIGHTS))
    missing = ensure_exports(run, digest, spread(splits.val, VALIDATION_IMAGES), None, None, MAX_DROP)
    test = splits.test() if not args.test_images else spread(splits.test(), args.test_images)
    sample = test.images[0 : max(args.batch_size, 64)]
    predictors = {row[0]: predictor for row, predictor in row_predictors(run, "cpu", missing)}
    for name, why in missing.items():
        print(f"{name}: not measured — {why}")
    rows = {}
    for name, predictor in predictors.items():
        runtime, precision = predictor.runtime, name.split()[-1]
        accuracy = gate_accuracy(predictor, test)
        rows[name] = {"name": name, "runtime": runtime, "precision": precision, "test_accuracy": round(accuracy, 6)}
        print(f"{name}: test accuracy {accuracy:.2%}", flush=True)
    for r in range(args.rounds):
        for name, predictor in predictors.items():
            rows[name].setdefault("rounds_images_per_second", []).append(
                images_per_second(predictor, sample, args.batch_size)
            )
            rows[name].setdefault("rounds_p50_ms", []).append(latency_ms(predictor, sample, 200)["p50_ms"])
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {row['rounds_images_per_second'][-1]:,.0f} img/s" for n, row in rows.items()),
            flush=True,
        )
    for row in rows.values():
        row["images_per_second"] = statistics.median(row["rounds_images_per_second"])
        row["p50_ms"] = statistics.median(row["rounds_p50_ms"])
    ratios = {}
    torch_rows = [r for r in rows.values() if r["runtime"] == "torch"]
    torch_best = max(torch_rows, key=lambda r: r["images_per_second"])
    fp32 = rows.get("onnxruntime fp32")
    for runtime in ("onnxruntime", "openvino"):
        int8 = rows.get(f"{runtime} int8")
        if int8 is None or fp32 is None:
            continue
        prefix = "" if runtime == "onnxruntime" else "openvino_"  # onnxruntime's keys as they were
        ratios.update(
            {
                f"{prefix}int8_over_onnxruntime_fp32": round(int8["images_per_second"] / fp32["images_per_second"], 3),
                f"{prefix}int8_over_best_torch": round(int8["images_per_second"] / torch_best["images_per_second"], 3),
                f"{prefix}int8_accuracy_drop_points": round((fp32["test_accuracy"] - int8["test_accuracy"]) * 100, 3),
                f"{prefix}int8_p50_ratio_batch1": round(fp32["p50_ms"] / int8["p50_ms"], 3),
            }
        )
    ratios["best_torch"] = torch_best["name"]
    result = {
        "benchmark": "int8",
        "model": card.model,
        "run": str(args.run_dir),
        "command": command_line(),
        "seed": cfg.seed,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino_version(),
        "input_size": card.input_size,
        "test_images": len(test),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "missing": missing,
        **ratios,
        "rows": list(rows.values()),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    print(write_result(f"int8_{args.name or card.model}", result))


if __name__ == "__main__":
    main()
