"""Why onnxruntime's input is normalised in NumPy: images/s of an ONNX model at batch 64 with the normalisation done
in PyTorch, in NumPy, or not at all (``session.run`` alone), with onnxruntime's threads spinning between runs (its
default) or not.

    uv run python benchmarks/onnx_prepare.py benchmarks/runs/resnet20_e10/model.int8.onnx --rounds 5

Each variant runs about a second per round, the variants taking turns; medians over rounds. Writes
benchmarks/results/onnx_prepare.json.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import onnxruntime
import torch
from common import command_line, write_result

from imgclf.inference.load import load_predictor
from imgclf.inference.predictor import Predictor

BATCH = 64


def rate(step: Callable[[], object], seconds: float = 1.0) -> float:
    """Images/s of ``step`` (one batch) over about ``seconds``, after one call."""
    step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += BATCH
    return count / (time.perf_counter() - start)


def session(path: str, spinning: bool) -> onnxruntime.InferenceSession:
    """A CPU session whose intra-op threads spin between runs or not."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    start = time.perf_counter()
    predictor = load_predictor(args.onnx, "cpu", "onnxruntime")
    side, name = predictor.card.input_size, predictor.input_name
    images = torch.randint(
        0, 256, (BATCH, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    ready = predictor.prepare(images).numpy()

    def in_torch(s: onnxruntime.InferenceSession) -> Callable[[], object]:
        return lambda: s.run(None, {name: Predictor.prepare(predictor, images).contiguous().numpy()})

    def in_numpy(s: onnxruntime.InferenceSession) -> Callable[[], object]:  # OnnxPredictor's own preparation
        return lambda: s.run(None, {name: predictor.prepare(images).numpy()})

    variants = {}
    for spinning in (True, False):
        s, tag = session(args.onnx, spinning), "spinning" if spinning else "not spinning"
        variants[f"session.run alone, {tag}"] = lambda s=s: s.run(None, {name: ready})
        variants[f"normalised in PyTorch, {tag}"] = in_torch(s)
        variants[f"normalised in NumPy, {tag}"] = in_numpy(s)
    rounds = {k: [] for k in variants}
    for _ in range(args.rounds):
        for k, step in variants.items():
            rounds[k].append(round(rate(step), 1))
    rows = [{"variant": k, "images_per_second": statistics.median(v), "rounds": v} for k, v in rounds.items()]
    for row in rows:
        print(f"{row['variant']:<36} {row['images_per_second']:>9,.0f} img/s")
    result = {
        "benchmark": "onnx_prepare",
        "model": predictor.card.model,
        "file": args.onnx,
        "command": command_line(),
        "seed": 0,
        "onnxruntime": onnxruntime.__version__,
        "batch_size": BATCH,
        "rows": rows,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    print(write_result("onnx_prepare", result))


if __name__ == "__main__":
    main()
