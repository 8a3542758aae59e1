"""`imgclf serve` under a loopback load test: `hey` (Debian package) posts one CIFAR-10 test image, as PNG, 10,000 times
at concurrency 1, 8 and 32 — latency percentiles, throughput, errors, and the server's resident memory before and after
— and how long a fresh server takes to answer /health and to be ready (``startup_seconds``: the slowest runtime's
median /ready time).

    sudo apt-get install hey
    uv run python benchmarks/serve.py benchmarks/runs/train_resnet20_seed1_seed1
    uv run python benchmarks/serve.py RUN_DIR --runtimes onnxruntime torch --repeats 3

The server runs in its own process on a free loopback port (nothing else is targeted); each load test stops by itself
after its requests. Percentiles come from hey's per-request CSV; a level is repeated ``--repeats`` times and the
median of each figure is reported (errors summed). The client shares this machine's cores with the server.
Writes benchmarks/results/serve.json.
"""

import argparse
import csv
import io
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

from imgclf.artifacts.runs import RunDir
from imgclf.data.cifar import load_cifar10
from imgclf.inference.options import RUNTIMES

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def start_server(run: str, runtime: str, port: int, extra: list[str]) -> tuple[subprocess.Popen, dict]:
    """`imgclf serve` on ``port``, returned once /ready answers 200, with the seconds from the command's start to the
    first answer of /health and of /ready 200 (polled every 10 ms)."""
    command = [sys.executable, "-m", "imgclf.cli", "serve", run, "--port", str(port), "--runtime", runtime, *extra]
    log = Path(tempfile.gettempdir()) / f"imgclf-serve-benchmark-{port}.log"  # a file: a full pipe would block it
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    deadline, seconds = time.monotonic() + 120, {}
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if "health_seconds" not in seconds and httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success:
                seconds["health_seconds"] = round(time.perf_counter() - start, 3)
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                seconds["ready_seconds"] = round(time.perf_counter() - start, 3)
                return process, seconds
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    process.kill()
    raise SystemExit(f"the server did not start: {log.read_text()}")


def startup(run: str, runtime: str, extra: list[str], rounds: int) -> dict:
    """Median seconds to /health and to /ready over ``rounds`` fresh starts of the server (nothing else running)."""
    times = []
    for _ in range(rounds):
        process, seconds = start_server(run, runtime, free_port(), extra)
        process.terminate()
        process.wait(timeout=30)
        times.append(seconds)
    keys = ("health_seconds", "ready_seconds")
    return {**{k: statistics.median(t[k] for t in times) for k in keys}, "rounds": times}


def batch_totals(base: str) -> tuple[float, float]:
    """(images, batches) the server has predicted so far, from its Prometheus metrics."""
    text = httpx.get(f"{base}/metrics").text
    value = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("imgclf_batch")}
    return value["imgclf_batch_images_sum"], value["imgclf_batch_images_count"]


def load_test(url: str, image: Path, requests: int, concurrency: int) -> dict:
    """One hey run: latency percentiles (ms), requests/second and non-200 answers. hey gives each of its
    ``concurrency`` workers ``requests // concurrency`` requests, so ``requests`` is rounded up to a multiple."""
    requests = -(-requests // concurrency) * concurrency
    command = ["hey", "-n", str(requests), "-c", str(concurrency), "-m", "POST", "-T", "image/png", "-D", str(image)]
    start = time.perf_counter()
    out = subprocess.run([*command, "-o", "csv", url], capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    rows = list(csv.DictReader(io.StringIO(out)))
    latency = np.array([float(r["response-time"]) for r in rows]) * 1000
    errors = sum(r["status-code"] != "200" for r in rows) + (requests - len(rows))  # failed: no row, or not 200
    span = max(float(r["offset"]) + float(r["response-time"]) for r in rows)
    return {
        "requests": requests,
        "errors": errors,
        "p50_ms": round(float(np.percentile(latency, 50)), 2),
        "p95_ms": round(float(np.percentile(latency, 95)), 2),
        "p99_ms": round(float(np.percentile(latency, 99)), 2),
        "requests_per_second": round(len(rows) / span, 1),
        "client_wall_seconds": round(wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory to serve")
    parser.add_argument("--runtimes", nargs="+", default=["auto"], choices=RUNTIMES)
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--startups", type=int, default=5, help="fresh starts timed per runtime (0: none)")
    parser.add_argument("--tag", help="write serve_TAG.json instead of serve.json")
    parser.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[], help="passed on to imgclf serve")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        raise SystemExit("hey is not installed (sudo apt-get install hey)")
    start = time.perf_counter()
    image = Path("/tmp/imgclf-serve-benchmark.png")
    test = load_cifar10("test")
    Image.fromarray(test.images[0].permute(1, 2, 0).numpy()).save(image)
    rows = []
    startups = {}
    for runtime in args.runtimes:
        if args.startups:
            startups[runtime] = startup(args.run, runtime, args.serve_args, args.startups)
            print(
                f"{runtime}: /health after {startups[runtime]['health_seconds']:.2f} s, /ready after "
                f"{startups[runtime]['ready_seconds']:.2f} s (median of {args.startups} starts)"
            )
        port = free_port()
        server, _ = start_server(args.run, runtime, port, args.serve_args)
        url = f"http://127.0.0.1:{port}/predict"
        try:
            chosen = httpx.get(f"http://127.0.0.1:{port}/ready").json()["runtime"]
            load_test(url, image, 500, 8)  # warm-up: connections, allocator, caches
            for concurrency in args.concurrency:
                rss_before = rss_bytes(server.pid)
                images_before, batches_before = batch_totals(f"http://127.0.0.1:{port}")
                runs = [load_test(url, image, args.requests, concurrency) for _ in range(args.repeats)]
                images, batches = batch_totals(f"http://127.0.0.1:{port}")
                row = {"benchmark": "serve", "runtime": chosen, "runtime_option": runtime, "concurrency": concurrency}
                for key in ("requests", "p50_ms", "p95_ms", "p99_ms", "requests_per_second"):
                    row[key] = statistics.median(r[key] for r in runs)
                row.update(errors=sum(r["errors"] for r in runs), rss_before_bytes=rss_before)
                row.update(rss_after_bytes=rss_bytes(server.pid), runs=runs)
                row["mean_batch_images"] = round((images - images_before) / (batches - batches_before), 2)
                rows.append(row)
                print(
                    f"{chosen:>11} c={concurrency:<3} p50 {row['p50_ms']:6.2f} ms  p95 {row['p95_ms']:6.2f}  "
                    f"p99 {row['p99_ms']:6.2f}  {row['requests_per_second']:7.1f} req/s  errors {row['errors']}  "
                    f"RSS {rss_before / 2**20:.0f} → {row['rss_after_bytes'] / 2**20:.0f} MiB  "
                    f"batches of {row['mean_batch_images']} images"
                )
        finally:
            server.terminate()
            server.wait(timeout=30)
    run = Path(args.run).resolve()
    shown = run.relative_to(REPO) if run.is_relative_to(REPO) else run
    command = f"uv run python benchmarks/serve.py {shown} " + " ".join(sys.argv[2:])

    record = {"benchmark": "serve", "model": RunDir(run).read_card().model, "command": command.strip(), "seed": 0}
    record.update(wall_seconds=round(time.perf_counter() - start, 1), image="CIFAR-10 test image 0, 32×32 PNG")
    record.update(client="hey " + subprocess.run(["dpkg-query", "-W", "-f=${Version}", "hey"], capture_output=True,
                                                 text=True).stdout, rows=rows)  # fmt: skip
    if startups:
        record["startup"] = startups
        record["startup_seconds"] = max(s["ready_seconds"] for s in startups.values())
    print(write_result(f"serve_{args.tag}" if args.tag else "serve", record))


if __name__ == "__main__":
    main()
