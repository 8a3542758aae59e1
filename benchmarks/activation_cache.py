"""How fast the transfer runs' activation cache fills: the frozen Lite2 prefix per engine, on real CIFAR-10 images.

    uv run python benchmarks/activation_cache.py                      # Lite2, 224 px, the lite2_224 recipe's prefix
    uv run python benchmarks/activation_cache.py --config lite2_96 --rounds 5

Engines alternate round by round in one process (a side-by-side ratio): onnxruntime (fp32; the default on a CPU),
torch.compile with bf16 autocast (the fallback), eager PyTorch with bf16 autocast. Builds (export, compilation) are
done before timing and reported apart. Agreement: max |Δ| between onnxruntime's activations and fp32 PyTorch's,
relative to the largest |activation|. Writes benchmarks/results/activation_cache[_CONFIG].json.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, write_result

from imgclf.config.build import build_config
from imgclf.config.files import load_config_file
from imgclf.core.device import autocast
from imgclf.data.cifar import load_cifar10
from imgclf.data.features import ActivationCache, resize_normalise
from imgclf.models.transfer import build_transfer_model

ENGINES = ("onnxruntime", "compiled", "eager")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="lite2_224", help="a bundled transfer recipe")
    parser.add_argument("--images", type=int, default=2048, help="images per timed pass")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    cfg = build_config(load_config_file(args.config), {})
    tm = build_transfer_model(cfg, 10)
    data = load_cifar10("train").subset(torch.arange(args.images))
    cpu = torch.device("cpu")
    caches, build_seconds = {}, {}
    for engine in ENGINES:
        cache = ActivationCache(
            None, tm.prefix, tm.image_size, tm.mean, tm.std, cpu, "bf16", compile=engine != "eager", progress=False
        )
        cache.onnx_failed = engine == "compiled"
        assert cache.engine(len(data)) == engine
        t = time.perf_counter()
        runner = cache._runner(engine)  # export or compile, then one warm-up batch
        with torch.inference_mode(), autocast(cpu, "bf16"):
            runner(
                resize_normalise(data.images[: cache.batch_size], tm.image_size, tm.mean, tm.std, engine != ENGINES[0])
            )
        build_seconds[engine] = round(time.perf_counter() - t, 1)
        caches[engine] = cache
    rates: dict[str, list[float]] = {engine: [] for engine in ENGINES}
    outputs = {}
    for _ in range(args.rounds):
        for engine, cache in caches.items():
            t = time.perf_counter()
            outputs[engine] = cache.compute(data, flip=False)
            rates[engine].append(round(len(data) / (time.perf_counter() - t), 1))
    with torch.inference_mode():
        sample = data.images[:64]
        exact = tm.prefix(resize_normalise(sample, tm.image_size, tm.mean, tm.std))
    error = (outputs["onnxruntime"][:64].float() - exact).abs().max() / exact.abs().max()
    median = {engine: statistics.median(r) for engine, r in rates.items()}
    record = {
        "benchmark": "activation_cache",
        "model": f"{cfg.model} prefix ({args.config}: unfreeze {cfg.unfreeze}, {tm.image_size} px)",
        "command": command_line(),
        "seed": 0,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "images": len(data),
        "batch_size": caches["eager"].batch_size,
        "threads": torch.get_num_threads(),
        "images_per_second": median,
        "runs": rates,
        "build_seconds": build_seconds,
        "speedup_onnxruntime_vs_compiled": round(median["onnxruntime"] / median["compiled"], 2),
        "speedup_onnxruntime_vs_eager": round(median["onnxruntime"] / median["eager"], 2),
        "onnxruntime_relative_max_error": round(float(error), 5),
    }
    suffix = "" if args.config == "lite2_224" else f"_{args.config}"
    path = write_result(f"activation_cache{suffix}", record)
    print(f"{path}: {median} img/s, onnxruntime {record['speedup_onnxruntime_vs_compiled']}× compiled")


if __name__ == "__main__":
    main()
