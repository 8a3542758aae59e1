"""``imgclf serve RUN_DIR|MODEL``: a trained model over HTTP (FastAPI + uvicorn), with a page to drop images on.

    POST /predict   one image as the raw body (Content-Type image/* or application/octet-stream), or several as
                    multipart/form-data file fields → {"predictions": [{"filename", "top": [{"class", "probability"}]}]}
                    (a multi-label model adds "labels": the classes at or above their thresholds)
    GET  /          the page: drop or pick an image, see it with its top-k bars
    GET  /health    the process is up;  GET /ready: the model is loaded and warmed up (503 once it shuts down)
    GET  /metrics   Prometheus: requests by path and status, latency histogram, errors by reason, images, batch sizes
    GET  /info      the model card;     GET /docs: the OpenAPI page

Every limit is an option (:class:`Limits`): body size (413, checked against Content-Length before anything is read,
and counted while reading), image pixels (413, from the image header, before decoding: a decompression bomb never
expands), images per request (413), request time (408 while the body arrives, 504 for the work), concurrent requests
(503 with Retry-After). Anything that is not a usable image gets a 4xx with a one-line JSON error ``{"error": …}``;
the server stays up. Images are decoded by ``data/decode.py``, like the training images, on one inference thread
that predicts every request waiting for it as one batch (``--batch-window-ms`` waits for more); the event loop stays
free for connections.
"""

import asyncio
import contextlib
import dataclasses
import io
import json
import socket
import sys
from collections.abc import AsyncIterator
from importlib.resources import files
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from imgclf.core.errors import ImgclfError, os_reason
from imgclf.core.io import cache_dir
from imgclf.inference.options import Limits
from imgclf.inference.predictor import Predictor, runtime_note
from imgclf.inference.requests import Inference, Metrics, MetricsMiddleware, ServeError, read_body, uploaded_images


def blank_png(side: int) -> bytes:
    """A black square PNG: the warm-up request."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side)).save(buffer, "PNG")
    return buffer.getvalue()


def page_html(predictor: Predictor) -> str:
    """The page, with the model's name, dataset and classes filled in."""
    info = {"model": predictor.card.model, "dataset": predictor.card.dataset, "classes": predictor.classes}
    template = files("imgclf.inference").joinpath("page.html").read_text(encoding="utf-8")
    return template.replace("{{INFO}}", json.dumps(info).replace("</", "<\\/"))


class Service:
    """What the routes of :func:`create_app` answer with: the predictor, its inference thread, the limits, readiness
    and the requests in flight."""

    def __init__(self, predictor: Predictor, limits: Limits, calibrated: bool) -> None:
        self.predictor, self.limits, self.calibrated = predictor, limits, calibrated
        self.metrics = Metrics()
        self.inference = Inference(predictor, limits, self.metrics)
        self.ready, self.in_flight = False, 0

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """Start the inference thread and warm it up (the first batch pays one-off costs) before answering."""
        await self.inference.start()
        await self.inference([(None, blank_png(self.predictor.card.data_size))])
        self.ready = True
        yield
        self.ready = False
        await self.inference.stop()

    def readiness(self) -> JSONResponse:
        """200 when the model is loaded and warmed up (the server answers nothing before), 503 once it shuts down."""
        body = {"ready": self.ready, "model": self.predictor.card.model, "runtime": self.predictor.runtime}
        return JSONResponse(body, 200 if self.ready else 503)

    def info(self) -> dict:
        """The model card (classes, input side, preprocessing, temperature), the runtime and the limits."""
        predictor = self.predictor
        info = {**predictor.card.to_dict(), "runtime": predictor.runtime, "calibrated": self.calibrated}
        if predictor.measured:  # auto chose the runtime: the images/second it measured for each
            info["measured_images_per_second"] = predictor.measured
        info["runtime_note"] = runtime_note(predictor)
        return {**info, "limits": dataclasses.asdict(self.limits)}

    async def predict(self, request: Request) -> JSONResponse:
        """A request's predictions, refused with 503 beyond ``max_concurrency`` requests in flight."""
        limits = self.limits
        if self.in_flight >= limits.max_concurrency:
            raise ServeError(503, f"busy: {limits.max_concurrency} requests in progress, retry shortly", "busy")
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            return JSONResponse(await self.answer(request))  # a dict of plain values: no response model to validate
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    async def answer(self, request: Request) -> dict:
        """The top-k classes of each image of ``request``, within the time limit (408 for the body, 504 for work)."""
        limits, predictor = self.limits, self.predictor
        deadline = asyncio.get_running_loop().time() + limits.timeout_seconds
        try:
            async with asyncio.timeout_at(deadline):
                body = await read_body(request, limits.max_body_bytes)
        except TimeoutError:
            late = f"the request body did not arrive within {limits.timeout_seconds:g} s"
            raise ServeError(408, late, "timeout") from None
        uploads = await uploaded_images(request, body, limits)
        try:
            async with asyncio.timeout_at(deadline):
                logits = await self.inference(uploads)
        except TimeoutError:
            late = f"the prediction took longer than {limits.timeout_seconds:g} s"
            raise ServeError(504, late, "timeout") from None
        self.metrics.images.inc(len(logits))
        probs = predictor.probabilities(logits, self.calibrated)
        tops = predictor.top_k(probs, limits.top_k)
        predictions = [
            {"filename": name, "top": [{"class": c, "probability": round(p, 6)} for c, p in top]}
            for (name, _), top in zip(uploads, tops, strict=True)
        ]
        for prediction, labels in zip(predictions, predictor.labels(logits, probs) or [], strict=False):
            prediction["labels"] = [{"class": c, "probability": round(p, 6)} for c, p in labels]
        calibrated_now = self.calibrated and predictor.temperature is not None
        return {"model": predictor.card.model, "calibrated": calibrated_now, "predictions": predictions}


PREDICT_BODY = {  # /predict's request body in the OpenAPI page: one raw image, or a form of files
    "requestBody": {
        "required": True,
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
        },
    }
}


def add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every refusal and failure as a one-line JSON error ``{"error": …}`` with its status, counted by reason."""

    @app.exception_handler(ServeError)
    async def refused(request: Request, exc: ServeError) -> JSONResponse:
        metrics.errors.labels(exc.reason).inc()
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse({"error": exc.message}, exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        metrics.errors.labels("internal").inc()
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, 500)


def create_app(predictor: Predictor, limits: Limits | None = None, calibrated: bool = True) -> FastAPI:
    """The FastAPI application serving ``predictor`` under ``limits``."""
    service = Service(predictor, limits or Limits(), calibrated)
    page = page_html(predictor)
    description = f"{predictor.card.model} trained on {predictor.card.dataset}: top-k classes of images."
    app = FastAPI(title="imgclf", description=description, lifespan=service.lifespan)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    add_error_handlers(app, service.metrics)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 when the model is loaded and warmed up (the server answers nothing before), 503 once it shuts down."""
        return service.readiness()

    @app.get("/info")
    async def info() -> dict:
        """The model card (classes, input side, preprocessing, temperature), the runtime and the limits."""
        return service.info()

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: Request) -> JSONResponse:
        """Top-k classes with probabilities (calibrated by the run's temperature) of each uploaded image."""
        return await service.predict(request)

    return app


def serving_predictor(source: str | Path, device: str = "cpu", runtime: str = "auto") -> Predictor:
    """The predictor ``imgclf serve`` runs. On a CPU, ``auto`` serves a run through PyTorch or onnxruntime, whichever
    answers single images faster here (measured at start-up); a run without a current export of its own is exported
    to the ONNX cache first and checked against PyTorch. Where that export fails, PyTorch serves, with a warning."""
    from imgclf.artifacts.runs import RunDir
    from imgclf.core.device import select_device
    from imgclf.inference.predictor import load_predictor, run_onnx

    path = Path(source).expanduser()
    cpu = select_device(device).type == "cpu"
    if runtime == "torch" or not path.is_dir() or not (cpu or runtime == "onnxruntime"):
        return load_predictor(source, device, runtime, batch_size=1)
    run = RunDir(path)
    run.read_config()
    try:
        onnx_path = run_onnx(run) or cached_export(run)
    except (ImgclfError, OSError) as exc:
        if runtime == "onnxruntime":
            raise
        print(f"imgclf: warning: serving with PyTorch, the ONNX export failed: {exc}".splitlines()[0], file=sys.stderr)
        return load_predictor(source, device, "torch", batch_size=1)
    return load_predictor(source, device, runtime, batch_size=1, onnx_path=onnx_path)


def cached_export(run) -> Path:
    """An ONNX export of ``run``'s weights in the user's cache (keyed by the weights), made now if missing and checked
    against PyTorch on random images (the run's test split stays unread)."""
    from imgclf.artifacts.runs import BEST_WEIGHTS
    from imgclf.inference.export import export_run
    from imgclf.inference.predictor import weights_digest

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
    """Bind the address, load the model and serve it with uvicorn until interrupted. Connections made while the model
    loads wait in the socket's queue: none is refused."""
    import uvicorn

    from imgclf.inference.http_guard import MAX_HEAD_BYTES, guarded_protocol

    sock = listening_socket(host, port)
    url = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
    try:
        predictor = serving_predictor(source, device, runtime)
        app = create_app(predictor, limits, calibrated=not raw)
        print(f"serving {predictor.card.model} ({runtime_note(predictor)}) on {url} — the page is at /", flush=True)
        protocol = guarded_protocol(limits.header_timeout_seconds)  # h11, bounded: size, count, time of the heads
        config = uvicorn.Config(app, http=protocol, h11_max_incomplete_event_size=MAX_HEAD_BYTES, **SERVER_OPTIONS)
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down gracefully
        pass
    finally:
        sock.close()
