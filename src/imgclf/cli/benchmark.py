"""`imgclf benchmark RUN_DIR`: its options and the command, which prints the table of runtimes × precisions."""

import argparse

from imgclf.cli.flags import MOVED_HELP
from imgclf.core.errors import ImgclfError


def add_benchmark_parser(sub) -> None:
    """The benchmark command's options."""
    bench = sub.add_parser(
        "benchmark", help="accuracy, latency, throughput and size of each runtime × precision of a run (which to ship)"
    )
    bench.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `imgclf train`")
    bench.add_argument("--batch-size", type=int, default=64, help="images per batch of the throughput column (64)")
    bench.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N (PyTorch rows)")
    bench.add_argument("--data", help=MOVED_HELP)
    bench.add_argument("--data-dir", help="CIFAR runs: folder holding the downloaded files")


def command_benchmark(args: argparse.Namespace) -> None:
    if not 1 <= args.batch_size <= 4096:
        raise ImgclfError(f"--batch-size must be in 1..4096, got {args.batch_size}")
    from imgclf.artifacts.files import BENCHMARK
    from imgclf.evaluation.benchmark import benchmark_run

    record = benchmark_run(args.run_dir, args.device, args.batch_size, args.data, args.data_dir)
    print(
        f"{record['model']} on {record['device']}: {record['validation_images']:,} validation images, latency over "
        f"{record['latency_calls']} single images, throughput at batch {record['batch_size']}"
    )
    print(f"{'format':<18} {'val acc':>8} {'p50 ms':>8} {'p99 ms':>8} {'img/s':>9} {'size MB':>8}")
    for r in record["rows"]:
        print(
            f"{r['name']:<18} {r['val_accuracy']:>8.2%} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
            f"{r['images_per_second']:>9,.0f} {r['bytes'] / 1e6:>8.2f}"
        )
    for name, why in record["missing"].items():
        print(f"{name}: not measured — {why}")
    print(f"fastest at batch 1: {record['fastest_at_batch_1']}; imgclf serve uses {record['served']}")
    print(f"written to {args.run_dir}/{BENCHMARK}")
