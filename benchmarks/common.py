"""Shared helpers of the benchmark scripts: machine description and the JSON result record."""

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = RESULTS.parent.parent


def command_line(runner: str = "uv run python") -> str:
    """How this benchmark was started, relative to the repo: e.g. 'uv run python benchmarks/ddp.py --rounds 5'."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO).as_posix() if script.is_relative_to(REPO) else script.name
    return shlex.join([*runner.split(), shown, *sys.argv[1:]])


def machine() -> str:
    """CPU model, core count and GPU (if any) of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}"


def git_commit() -> str:
    """The commit the benchmark ran on (with '+dirty' for uncommitted changes)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return sha + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def write_result(name: str, record: dict) -> Path:
    """Write one benchmark record (with machine, torch version, date and commit added) to benchmarks/results/."""
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": machine(),
        "torch": torch.__version__,
        "commit": git_commit(),
        **record,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
