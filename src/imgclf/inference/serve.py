"""``imgclf serve RUN_DIR|MODEL``: the process. It checks the model's path (without torch), binds the address,
answers /health from then on and loads the model in the background (``serving.py``: the benchmarked runtime, or an
export to the ONNX cache and the runtimes timed on single images), saying each step; the application
is ``app.py``. Nothing here imports torch: /health answers in about a second."""

import functools
import importlib.util
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.core.errors import OPENVINO_MISSING, ImgclfError, os_reason
from imgclf.inference.app import create_app
from imgclf.inference.options import Limits
from imgclf.inference.source import model_path

if TYPE_CHECKING:
    from imgclf.inference.predictor import Predictor


def load_served(source: str | Path, device: str, runtime: str, say) -> "Predictor":
    """The predictor to serve (imports torch: called on the loading thread)."""
    from imgclf.inference.serving import serving_predictor

    return serving_predictor(source, device, runtime, say)


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

    from imgclf.inference.http_guard import guarded_protocol

    start = time.perf_counter()
    model_path(source)  # no model there: one line, before anything binds
    if runtime == "openvino" and importlib.util.find_spec("openvino") is None:
        raise ImgclfError(OPENVINO_MISSING)
    sock = listening_socket(host, port)
    url = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
    failures: list[Exception] = []

    def say(line: str) -> None:
        print(f"imgclf serve: {line} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)

    def ready(predictor: "Predictor") -> None:
        from imgclf.inference.load import runtime_note

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
        loader = functools.partial(load_served, source, device, runtime, say)
        app = create_app(loader, limits, not raw, on_ready=ready, on_failure=failed, source=source)
        protocol = guarded_protocol(limits.header_timeout_seconds)  # httptools, bounded: size, count, time of heads
        config = uvicorn.Config(app, http=protocol, **SERVER_OPTIONS)
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
