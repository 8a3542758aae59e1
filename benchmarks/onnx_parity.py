"""ONNX export parity on real test images: `imgclf export`'s check (max |Δlogit| and top-1 agreement of onnxruntime
against PyTorch fp32 on 1,000 test images spread over the split) for trained runs.

    uv run python benchmarks/onnx_parity.py benchmarks/runs/train_resnet20_seed1_seed1 \\
        benchmarks/runs/train_lite2_96_folder_seed0

The runs are exported to a temporary folder (the run directories are left as they were).
Writes benchmarks/results/onnx_parity.json.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from imgclf.inference.export import PARITY_IMAGES, export_run

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="trained run directories")
    parser.add_argument("--images", type=int, default=PARITY_IMAGES)
    args = parser.parse_args()
    start, rows = time.perf_counter(), []
    for run in args.runs:
        with tempfile.TemporaryDirectory() as tmp:
            result = export_run(run, Path(tmp) / "model.onnx", check_images=args.images)
        parity = result["parity"]
        path = Path(run).resolve()
        row = {"benchmark": "onnx_parity", "model": result["model"], "run": str(path.relative_to(REPO))}
        row.update({k: parity[k] for k in ("images", "max_abs_diff", "max_abs_logit", "relative_diff")})
        row.update(top1_agreement=parity["top1_agreement"], passed=parity["passed"], exporter=result["exporter"])
        row.update(onnx_bytes=result["bytes"], export_seconds=round(result["export_seconds"], 1))
        rows.append(row)
        print(
            f"{row['model']}: max |Δlogit| {row['max_abs_diff']:.2e} ({row['relative_diff']:.1e} relative), "
            f"top-1 agreement {row['top1_agreement']:.2%} on {row['images']:,} test images ({row['exporter']})"
        )
    runs = [str(Path(r).resolve().relative_to(REPO)) for r in args.runs]
    record = {"benchmark": "onnx_parity", "model": "+".join(r["model"] for r in rows), "seed": 0}
    record.update(command="uv run python benchmarks/onnx_parity.py " + " ".join(runs))
    record.update(wall_seconds=round(time.perf_counter() - start, 1), rows=rows)
    print(write_result("onnx_parity", record))


if __name__ == "__main__":
    main()
