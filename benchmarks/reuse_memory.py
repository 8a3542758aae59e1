"""Training img/s with glibc's malloc defaults against imgclf's reuse of freed memory (device.reuse_freed_memory).

    uv run python benchmarks/reuse_memory.py              # 3 rounds, alternated, median reported

Each setting runs in its own process (malloc settings hold for a whole process), rounds alternated: the phase-2 step
of the lite2_224 recipe (the last 11 layers of EfficientNet-Lite2 on its 14×14×88 activations, frozen BatchNorm,
fast depthwise backward, AdamW, bf16 autocast, batch 128) and ResNet-20 at 32 px (SGD, batch 128).
Writes benchmarks/results/reuse_memory.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CASES = ("lite2_224_phase2", "resnet20")


def worker(case: str, steps: int) -> float:
    """Images per second of ``steps`` timed training steps of ``case`` after two warm-up steps, in this process."""
    import torch
    from common import seconds_per_step, training_step

    from imgclf.core.device import reuse_freed_memory
    from imgclf.models import create_model
    from imgclf.models.backbones import create_backbone, split_backbone
    from imgclf.models.layers import use_fast_depthwise
    from imgclf.training.trainer import set_train_mode

    reuse_freed_memory()  # off when IMGCLF_REUSE_MEMORY=0
    torch.manual_seed(0)
    if case == "resnet20":
        model = create_model("resnet20", 10).to(memory_format=torch.channels_last)
        x = torch.randn(128, 3, 32, 32)
        set_train_mode(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    else:
        network = create_backbone("tf_efficientnet_lite2", 10, pretrained=True, dropout=0.2)
        prefix, model = split_backbone(network.to(memory_format=torch.channels_last), "11")
        with torch.no_grad():
            x = prefix.eval()(torch.randn(128, 3, 224, 224).contiguous(memory_format=torch.channels_last))
        use_fast_depthwise(model)
        set_train_mode(model, freeze_batchnorm=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = x.to(torch.bfloat16)
    labels = torch.randint(0, 10, (128,))

    def batch() -> torch.Tensor:
        return x.float().contiguous(memory_format=torch.channels_last)  # as the loaders hand batches over

    return 128 / seconds_per_step(training_step(model, optimizer, batch, labels), 2, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--worker", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(worker(args.worker, args.steps))
        return
    from common import command_line, write_result

    start = time.perf_counter()
    runs = {case: {"default": [], "reuse": []} for case in CASES}
    for _ in range(args.rounds):
        for case in CASES:
            for setting in ("default", "reuse"):
                env = {**os.environ, "IMGCLF_REUSE_MEMORY": "0" if setting == "default" else "1"}
                command = [sys.executable, __file__, "--worker", case, "--steps", str(args.steps)]
                out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
                runs[case][setting].append(round(float(out.strip().splitlines()[-1]), 1))
        print(json.dumps(runs), flush=True)
    medians = {case: {s: statistics.median(r) for s, r in settings.items()} for case, settings in runs.items()}
    record = {
        "benchmark": "reuse_memory",
        "model": "tf_efficientnet_lite2 (phase 2 of lite2_224), resnet20",
        "command": command_line(),
        "seed": 0,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "batch_size": 128,
        "precision": "bf16",
        "images_per_second": medians,
        "speedup": {case: round(m["reuse"] / m["default"], 3) for case, m in medians.items()},
        "runs": runs,
    }
    print(json.dumps(record["images_per_second"]), record["speedup"])
    print(write_result("reuse_memory", record))


if __name__ == "__main__":
    main()
