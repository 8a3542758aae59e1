"""`imgclf benchmark RUN` as a committed result: each runtime × precision of a run (PyTorch fp32/bf16, onnxruntime
fp32/int8) — validation accuracy, latency p50/p99 at batch 1, images/s at batch 64, file size — and the int8 export's
gate (validation accuracy fp32 → int8) and speed-up over onnxruntime fp32 at batch 1 and at batch 64.

    uv run python benchmarks/formats.py benchmarks/runs/serve_resnet20

Runs ``imgclf benchmark`` in a process of its own (exports the run to ONNX and int8 where it has neither), then
copies RUN/benchmark.json with the usual keys into benchmarks/results/formats_MODEL.json.
"""

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, command_line, write_result


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: formats.py RUN_DIR")
    run = Path(sys.argv[1]).resolve()
    command = ["imgclf", "benchmark", str(run.relative_to(REPO) if run.is_relative_to(REPO) else run)]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    record = json.loads((run / "benchmark.json").read_text())
    rows = {r["name"]: r for r in record["rows"]}
    parity = run / "model.int8.parity.json"
    gate = json.loads(parity.read_text()).get("gate") if parity.is_file() else None  # also a refused one's figures
    speedups = {}
    if "onnxruntime int8" in rows:
        fp32, int8 = rows["onnxruntime fp32"], rows["onnxruntime int8"]
        speedups = {
            "int8_speedup_batch1_p50": round(fp32["p50_ms"] / int8["p50_ms"], 3),
            "int8_speedup_throughput": round(int8["images_per_second"] / fp32["images_per_second"], 3),
        }
    result = {
        "benchmark": "formats",
        "model": record["model"],
        "command": command_line(),
        "imgclf_command": "uv run " + shlex.join(command),
        "seed": 0,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "int8_gate": gate,
        **speedups,
        **{k: v for k, v in record.items() if k not in ("model", "device", "torch")},
    }
    print(write_result(f"formats_{record['model']}", result))


if __name__ == "__main__":
    main()
