"""Batch inference images/second on this machine: PyTorch eager (as `imgclf predict` runs it: BatchNorm folded into
the convolutions, bf16 autocast where the CPU has it, channels_last; also fp32, and without the folding) against
onnxruntime (fp32) on the same exported network, side by side.

    uv run python benchmarks/inference.py                       # resnet20 at 32 px, tf_efficientnet_lite2 at 224 px
    uv run python benchmarks/inference.py --rounds 3 --models resnet20

Each round times every runtime once, in turn, on the same uint8 CIFAR-10 test images (upscaled for 224 px) through
the Predictor — normalisation and resizing included, decoding not; the median over rounds is reported. Batch 1 is
timed too: the per-request cost a server pays (see benchmarks/serve.py). Throughput does not depend on the weights'
values: resnet20 is freshly initialised, Lite2 carries its ImageNet weights and a 10-class head.
Writes benchmarks/results/inference.json.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, write_result

from imgclf.artifacts.card import ModelCard
from imgclf.config.options import TrainConfig
from imgclf.core.device import cpu_has_native_bf16
from imgclf.core.onnx import export_network
from imgclf.data.cifar import CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from imgclf.inference.predictor import OnnxPredictor, TorchPredictor
from imgclf.models import create_model
from imgclf.models.backbones import create_backbone, preprocessing

SETUPS = {  # model: (input side, batch sizes)
    "resnet20": (32, (256, 1024, 1)),
    "tf_efficientnet_lite2": (224, (32, 1)),
}


def network_and_card(name: str, side: int) -> tuple[torch.nn.Module, ModelCard]:
    """The network and a card describing it (CIFAR-10 classes, its input side and normalisation)."""
    if name == "resnet20":
        network, mean, std = create_model(name), CIFAR10_MEAN, CIFAR10_STD
    else:
        network = create_backbone(name, 10, pretrained=True)
        prep = preprocessing(network)
        mean, std = prep.mean, prep.std
    config = TrainConfig(model=name).to_dict()
    card = ModelCard(name, [str(i) for i in range(10)], side, side, list(mean), list(std), "crop", "CIFAR-10",
                     "cifar10", "cifar10", config)  # fmt: skip
    return network.eval(), card


def images_per_second(predictor, batches: list[torch.Tensor], seconds: float) -> float:
    """Images/second of ``predictor.logits`` over ``batches``, repeated for at least ``seconds``."""
    predictor.logits(batches[0])  # warm-up
    count, start = 0, time.perf_counter()
    while True:
        for batch in batches:
            predictor.logits(batch)
            count += len(batch)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per runtime per round")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    test = load_cifar10("test", args.data_dir).images[:1024]
    rows = []
    bf16 = "bf16" if cpu_has_native_bf16() else "fp32"
    for name in args.models:
        side, batch_sizes = SETUPS[name]
        network, card = network_and_card(name, side)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            exporter = export_network(network, side, path)
            cpu = torch.device("cpu")
            predictors = {
                ("torch", bf16, True): TorchPredictor(network, card, cpu, bf16),
                ("onnxruntime", "fp32", False): OnnxPredictor(path, card),
            }
            if bf16 != "fp32":
                fp32_network = network_and_card(name, side)[0]
                fp32_network.load_state_dict(network.state_dict())
                predictors["torch", "fp32", True] = TorchPredictor(fp32_network, card, cpu, "fp32")
            torch_bf16 = predictors["torch", bf16, True]
            if torch_bf16.runner is not torch_bf16.network:  # BatchNorm folds here: also time the network as trained
                unfolded = TorchPredictor(network_and_card(name, side)[0], card, cpu, bf16)
                unfolded.network.load_state_dict(network.state_dict())
                unfolded.runner = unfolded.network
                predictors["torch", bf16, False] = unfolded
            for batch_size in batch_sizes:
                images = test if side == 32 else F.interpolate(test[:256].float(), size=side, mode="bilinear")
                images = images.clamp(0, 255).to(torch.uint8)
                batches = [images[i : i + batch_size] for i in range(0, min(len(images), 8 * batch_size), batch_size)]
                measured = {key: [] for key in predictors}
                for _ in range(args.rounds):
                    for key, predictor in predictors.items():
                        measured[key].append(round(images_per_second(predictor, batches, args.seconds), 1))
                for (runtime, precision, folded), values in measured.items():
                    row = {"benchmark": "inference", "model": name, "runtime": runtime, "precision": precision}
                    row["batchnorm_folded"] = folded
                    row.update(batch_size=batch_size, image_size=side, images_per_second=statistics.median(values))
                    row.update(runs=values, exporter=exporter)
                    rows.append(row)
                    rate = statistics.median(values)
                    shown = f"{runtime}{'' if folded or runtime != 'torch' else ' unfolded'}"
                    print(f"{name} {shown:>14} {precision} batch {batch_size:>4}: {rate:8.1f} img/s")
    for name in args.models:
        batch = SETUPS[name][1][0]
        shipped = [r for r in rows if r["batchnorm_folded"] == (r["runtime"] == "torch")]  # what predict runs
        by = {r["runtime"] + "/" + r["precision"]: r["images_per_second"] for r in shipped
              if r["model"] == name and r["batch_size"] == batch}  # fmt: skip
        print(
            f"{name}: onnxruntime / torch {bf16} at batch {batch} = {by['onnxruntime/fp32'] / by[f'torch/{bf16}']:.2f}"
        )
    record = {"benchmark": "inference", "model": "+".join(args.models), "command": command_line(), "seed": 0}
    record.update(wall_seconds=round(time.perf_counter() - start, 1), rounds=args.rounds, rows=rows)
    print(write_result("inference", record))


if __name__ == "__main__":
    main()
