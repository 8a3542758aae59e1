"""``imgclf serve RUN_DIR|MODEL``: the process. It checks the model's files, binds the address, answers /health from
then on and loads the model in the background (exporting a run to the ONNX cache when it has no export, and timing
PyTorch against onnxruntime on single images), saying each step; the application is ``app.py``."""

import functools
import socket
import sys
import time
from pathlib import Path

import torch

from imgclf.artifacts.runs import BENCHMARK, BEST_WEIGHTS, RunDir
from imgclf.core.errors import ImgclfError, os_reason
from imgclf.core.io import cache_dir
from imgclf.inference.app import create_app
from imgclf.inference.load import (
    is_current,
    load_predictor,
    resolve_model,
    run_onnx,
    runtime_note,
    weights_digest,
)
from imgclf.inference.options import Limits
from imgclf.inference.predictor import Predictor


def serving_predictor(source: str | Path, device: str = "cpu", runtime: str = "auto", say=None) -> Predictor:
    """The predictor ``imgclf serve`` runs. On a CPU, ``auto`` serves a run through PyTorch or onnxruntime, whichever
    answers single images faster here (measured at start-up); a run without a current export of its own is exported
    to the ONNX cache first and checked against PyTorch. Where that export fails, PyTorch serves, with a warning.
    ``say``: called with a line for each step."""
    from imgclf.core.device import select_device

    say = say or (lambda line: None)
    path = Path(source).expanduser()
    cpu = select_device(device).type == "cpu"
    if runtime == "torch" or not path.is_dir() or not (cpu or runtime == "onnxruntime"):
        say(f"loading the model ({runtime})")
        return load_predictor(source, device, runtime, batch_size=1)
    run = resolve_model(path, device, "torch").run  # checked before anything is exported
    if runtime == "auto" and (measured := benchmarked(run, say)) is not None:
        return measured
    try:
        onnx_path = run_onnx(run)
        if onnx_path is None:
            say(f"exporting the weights to ONNX, once (kept in {cache_dir('onnx')})")
            onnx_path = cached_export(run)
    except (ImgclfError, OSError) as exc:
        if runtime == "onnxruntime":
            raise
        print(f"imgclf: warning: serving with PyTorch, the ONNX export failed: {exc}".splitlines()[0], file=sys.stderr)
        return load_predictor(source, device, "torch", batch_size=1)
    say("loading the model" + (", timing PyTorch against onnxruntime on single images" if runtime == "auto" else ""))
    return load_predictor(source, device, runtime, batch_size=1, onnx_path=onnx_path)


def benchmarked(run: RunDir, say) -> Predictor | None:
    """The predictor of the row ``imgclf benchmark`` measured fastest at batch 1 (lowest p50), among those whose files
    are still current; None when the run has no such record (then the runtimes are timed at start-up)."""
    record = run.read_benchmark()
    if record is None:
        return None
    digest = weights_digest(run.file(BEST_WEIGHTS))
    if record["weights_sha1"] != digest:
        return None
    rows = [r for r in record["rows"] if r["runtime"] == "torch" or is_current(run.file(r["file"]), digest)]
    if not rows:
        return None
    best = min(rows, key=lambda r: r["p50_ms"])
    say(f"loading {best['name']}, the fastest at batch 1 in {BENCHMARK} (p50 {best['p50_ms']:.2f} ms)")
    if best["runtime"] == "torch":
        return load_predictor(run.path, "cpu", "torch", precision=best["precision"], batch_size=1)
    return load_predictor(run.file(best["file"]), "cpu", "onnxruntime", batch_size=1)


def cached_export(run) -> Path:
    """An ONNX export of ``run``'s weights in the user's cache (keyed by the weights), made now if missing and checked
    against PyTorch on random images (the run's test split stays unread)."""
    from imgclf.inference.export import export_run

    path = cache_dir("onnx") / f"{weights_digest(run.file(BEST_WEIGHTS))[:24]}.onnx"
    if not path.is_file():
        side = run.read_card().data_size if run.read_card() else 32
        images = torch.randint(
            0, 256, (64, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )
        export_run(run.path, path, images=images)
    return path


SERVER_OPTIONS = dict(log_level="warning", access_log=False, timeout_keep_alive=5)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound and listening on ``host``:``port`` (0: a free port; IPv6 when ``host`` has a colon, as uvicorn
    does), or a one-line error saying why not (the port is taken, the address is not this machine's, the name does
    not resolve)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except (OSError, UnicodeError, OverflowError) as exc:
        sock.close()
        reason = os_reason(exc) if isinstance(exc, OSError) else str(exc)
        raise ImgclfError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


def serve(source: str | Path, host: str, port: int, limits: Limits, device="auto", runtime="auto", raw=False) -> None:
    """Check the model's files, bind the address and serve with uvicorn until interrupted: /health answers from then
    on, the model loads in the background (a line on stderr per step), then /ready turns true and a line on stdout says
    where it serves. A model that fails to load stops the server with its one-line error."""
    import uvicorn

    from imgclf.inference.http_guard import MAX_HEAD_BYTES, guarded_protocol

    start = time.perf_counter()
    resolve_model(source, device, "torch" if Path(source).expanduser().is_dir() else runtime)  # bad input: one line
    sock = listening_socket(host, port)
    url = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
    failures: list[Exception] = []

    def say(line: str) -> None:
        print(f"imgclf serve: {line} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)

    def ready(predictor: Predictor) -> None:
        seconds = time.perf_counter() - start
        print(
            f"serving {predictor.card.model} ({runtime_note(predictor)}) on {url} — the page is at / "
            f"(ready in {seconds:.1f} s)",
            flush=True,
        )

    def failed(exc: Exception) -> None:
        failures.append(exc)
        server.should_exit = True

    try:
        say(f"listening on {url}: /health answers now, /ready once the model is loaded")
        loader = functools.partial(serving_predictor, source, device, runtime, say)
        app = create_app(loader, limits, calibrated=not raw, on_ready=ready, on_failure=failed)
        protocol = guarded_protocol(limits.header_timeout_seconds)  # h11, bounded: size, count, time of the heads
        config = uvicorn.Config(app, http=protocol, h11_max_incomplete_event_size=MAX_HEAD_BYTES, **SERVER_OPTIONS)
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down gracefully
        pass
    finally:
        sock.close()
    if failures:  # one line, by the command line's handler
        error = failures[0]
        if isinstance(error, ImgclfError | OSError):
            raise error
        raise ImgclfError(f"the model could not be loaded: {type(error).__name__}: {error}")
