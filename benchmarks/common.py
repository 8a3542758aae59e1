"""Shared helpers of the benchmark scripts: machine description, the JSON result record, a timed training step."""

import argparse
import csv
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from imgclf.core.device import cpu_name

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parent.parent


def command_line(runner: str = "uv run python") -> str:
    """How this benchmark was started, relative to the repo: e.g. 'uv run python benchmarks/ddp.py --rounds 5'."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO).as_posix() if script.is_relative_to(REPO) else script.name
    return shlex.join([*runner.split(), shown, *sys.argv[1:]])


def machine() -> str:
    """CPU model (family and model numbers included), core count and GPU (if any) of this machine."""
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_name()}, {os.cpu_count()} cores{gpu}"


def git_commit() -> str:
    """The commit the benchmark ran on (with '+dirty' for uncommitted changes)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return sha + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def write_result(name: str, record: dict, folder: Path = RESULTS) -> Path:
    """Write one benchmark record (with machine, torch version, date and commit added) to ``folder``
    (benchmarks/results/ unless told)."""
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": machine(),
        "torch": torch.__version__,
        "commit": git_commit(),
        **record,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def training_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor | Callable[[], torch.Tensor],
    labels: torch.Tensor,
    precision: str = "bf16",
    label_smoothing: float = 0.0,
) -> Callable[[], None]:
    """One optimizer step on a fixed batch as the trainer takes it (autocast forward, float32 loss, backward, step);
    ``images`` may be a function giving the batch, to time its preparation too."""
    from imgclf.core.device import autocast

    device = labels.device

    def step() -> None:
        batch = images() if callable(images) else images
        with autocast(device, precision):
            logits = model(batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def seconds_per_step(step: Callable[[], None], warmup: int, steps: int, device: torch.device | None = None) -> float:
    """Seconds per call of ``step`` over ``steps`` calls after ``warmup`` untimed ones (a GPU's queue drained)."""
    for _ in range(warmup):
        step()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def make_run_parser(doc: str, actions: tuple[str, ...] = ("make", "run")) -> argparse.ArgumentParser:
    """The parser of a benchmark that makes its dataset (``make FOLDER``) and runs on it (``run FOLDER``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=actions)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--data-dir", help="folder holding cifar-10-batches-py (make)")
    return parser


def parse_with_passthrough(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[str]]:
    """The benchmark's own arguments, and the flags after ``--`` (for the imgclf command it runs)."""
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    return parser.parse_args(argv[:cut]), argv[cut + 1 :]


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV file with a header."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@contextmanager
def cold_audit(source: Path, extra: list[str]) -> Iterator[tuple[Path, Path, list[str], float]]:
    """Run `imgclf audit SOURCE EXTRA` from empty preparation and embedding caches (a temporary folder, removed on
    leaving): (its output folder, the cache folder, the command, wall seconds); the caches stay for the block."""
    with tempfile.TemporaryDirectory(dir=Path.home() / ".cache") as tmp:
        cache = Path(tmp)
        command = ["imgclf", "audit", str(source), "--output", str(cache / "report"), "--no-progress"]
        command += ["--cache-dir", str(cache / "emb"), "--prepare-dir", str(cache / "prep"), *extra]
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True)
        yield cache / "report", cache, command, time.perf_counter() - start


def make_or_run(
    doc: str,
    make: Callable[[Path, str | None], None],
    run: Callable[..., None],
    file_option: tuple[str, str] | None = None,
    more: dict[str, Callable[[Path, Path | None], None]] | None = None,
    needs_file: tuple[str, ...] = (),
) -> None:
    """The main of a benchmark: ``make FOLDER``, ``run FOLDER [-- FLAGS]``, or another action of ``more`` (called
    with FOLDER and the file). ``file_option`` (flag, help): one file option of its own, handed to ``run`` after the
    flags and to ``more``'s actions; the actions of ``needs_file`` refuse to start without it."""
    more = more or {}
    parser = make_run_parser(doc, ("make", "run", *more))
    flag, text = file_option or ("", "")
    if file_option:
        parser.add_argument(flag, type=Path, help=text)
    args, extra = parse_with_passthrough(parser)
    file = getattr(args, flag.lstrip("-").replace("-", "_")) if file_option else None
    if args.action in needs_file and file is None:
        parser.error(f"{args.action} needs {flag} FILE ({text})")
    if args.action == "make":
        return make(args.folder, args.data_dir)
    if args.action == "run":
        return run(args.folder, extra, file) if file_option else run(args.folder, extra)
    more[args.action](args.folder, file)
