"""``imgclf serve RUN_DIR|MODEL``: a trained model over HTTP (FastAPI + uvicorn), with a page to drop images on.

    POST /predict   one image as the raw body (Content-Type image/* or application/octet-stream), or several as
                    multipart/form-data file fields → {"predictions": [{"filename", "top": [{"class", "probability"}]}]}
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
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from imgclf.data.decode import BadImage, decode
from imgclf.errors import ImgclfError
from imgclf.inference.options import Limits
from imgclf.inference.predictor import Predictor, runtime_note
from imgclf.io import cache_dir

RAW_TYPES = ("image/", "application/octet-stream")
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PATHS = ("/", "/predict", "/health", "/ready", "/metrics", "/info", "/docs", "/openapi.json")


class ServeError(Exception):
    """A request the server refuses: an HTTP status, a one-line message and a reason label for the metrics."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("imgclf_requests", "HTTP requests by path and status", ["path", "status"], registry=r)
        self.latency = Histogram(
            "imgclf_request_seconds", "Request latency by path", ["path"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.errors = Counter("imgclf_errors", "Refused or failed requests by reason", ["reason"], registry=r)
        self.images = Counter("imgclf_images", "Images predicted", registry=r)
        self.in_flight = Gauge("imgclf_in_flight_requests", "Prediction requests being handled", registry=r)
        self.batch = Histogram(
            "imgclf_batch_images", "Images per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )


class MetricsMiddleware:
    """Counts every HTTP request by path and status and times it (a plain ASGI middleware: no per-request task)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in PATHS else "other"
            self.metrics.requests.labels(path, str(status[0])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


class Inference:
    """One inference thread fed by a queue. Whenever it is free it takes every request waiting (up to ``max_batch``
    images; with a batch window it first waits that long for more), decodes their uploads and predicts them as one
    batch: one hand-over between the event loop and the thread per batch, not per request, and under load the
    network sees batches instead of single images."""

    def __init__(self, predictor: Predictor, limits: Limits, metrics: Metrics) -> None:
        self.predictor, self.limits, self.metrics = predictor, limits, metrics
        self.executor: ThreadPoolExecutor | None = None
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None

    async def start(self) -> None:
        """A fresh thread, queue and worker task for this run of the application (it may start again)."""
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgclf-inference")
        self.queue = asyncio.Queue()
        self.worker = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, uploads: list[tuple[str | None, bytes]]) -> np.ndarray:
        """The logits of the images ``uploads`` carry; :class:`ServeError` if one of them is not a usable image."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((uploads, future))
        return await future

    async def take(self) -> list[tuple[list, asyncio.Future]]:
        """The next batch of waiting requests."""
        loop = asyncio.get_running_loop()
        items = [await self.queue.get()]
        count, deadline = len(items[0][0]), loop.time() + self.limits.batch_window_ms / 1000
        while count < self.limits.max_batch:
            try:
                item = (
                    self.queue.get_nowait()
                    if self.limits.batch_window_ms <= 0
                    else await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                )
            except (asyncio.QueueEmpty, TimeoutError):
                break
            items.append(item)
            count += len(item[0])
        return [(uploads, future) for uploads, future in items if not future.done()]  # not the timed-out ones

    def predict(self, batch: list[list[tuple[str | None, bytes]]]) -> list[np.ndarray | ServeError]:
        """On the inference thread: each request's logits, or the error that refuses it."""
        card, decoded = self.predictor.card, []
        for uploads in batch:
            try:
                decoded.append(decode_all(uploads, card.data_size, card.resize, self.limits.max_pixels))
            except ServeError as exc:
                decoded.append(exc)
        images = [d for d in decoded if not isinstance(d, ServeError)]
        if not images:
            return decoded
        self.metrics.batch.observe(sum(len(i) for i in images))
        logits = self.predictor.logits(np.concatenate(images))
        parts = iter(np.split(logits, np.cumsum([len(i) for i in images])[:-1]))  # each request's rows, in order
        return [d if isinstance(d, ServeError) else next(parts) for d in decoded]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self.take()
            if not items:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.predict, [u for u, _ in items])
            except Exception as exc:  # a failure of the model itself: each waiting request gets it
                results = [exc] * len(items)
            for (_, future), result in zip(items, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServeError(400, "invalid Content-Length header", "bad_request")
        if int(declared) > limit:
            raise ServeError(
                413, f"request body of {int(declared):,} bytes is over the limit of {limit:,}", "too_large"
            )
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServeError(413, f"request body is over the limit of {limit:,} bytes", "too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ServeError(400, "the client disconnected before sending the whole body", "disconnect") from None
    return b"".join(chunks)


async def uploaded_images(request: Request, body: bytes, limits: Limits) -> list[tuple[str | None, bytes]]:
    """(file name, bytes) of each image of the request: the raw body, or each file field of a multipart form."""
    content_type = request.headers.get("content-type", "application/octet-stream").lower()
    if content_type.startswith("multipart/form-data"):

        async def stream() -> AsyncIterator[bytes]:
            yield body

        parser = MultiPartParser(
            Headers(raw=request.headers.raw),
            stream(),
            max_files=limits.max_images,
            max_part_size=limits.max_body_bytes,
        )
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            status = 413 if "Too many files" in str(exc) else 400
            raise ServeError(status, f"bad multipart form: {exc}", "bad_form") from None
        try:
            uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not uploads:
                raise ServeError(400, "the form holds no file: send images as file fields", "no_image")
            return [(u.filename, await u.read()) for u in uploads]
        finally:
            await form.close()  # the parts' temporary files
    if not content_type.startswith(RAW_TYPES):
        raise ServeError(
            415, f"unsupported Content-Type {content_type.split(';')[0]!r}: send image/* or a multipart form", "type"
        )
    if not body:
        raise ServeError(400, "empty request body: send an image", "empty")
    return [(None, body)]


def decode_all(uploads: list[tuple[str | None, bytes]], side: int, policy: str, max_pixels: int) -> np.ndarray:
    """The uploaded images as one uint8 batch; the first unusable one refuses the request."""
    images = []
    for name, data in uploads:
        try:
            images.append(decode(data, side, policy, max_pixels))
        except BadImage as exc:
            what = f"{name!r}" if name else "the upload"
            raise ServeError(
                413 if exc.too_large else 422, f"{what} is not a usable image: {exc}", "bad_image"
            ) from None
    return np.stack(images)


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


def create_app(predictor: Predictor, limits: Limits | None = None, calibrated: bool = True) -> FastAPI:
    """The FastAPI application serving ``predictor`` under ``limits``."""
    limits = limits or Limits()
    metrics = Metrics()
    inference = Inference(predictor, limits, metrics)
    state = {"ready": False, "in_flight": 0}
    page = page_html(predictor)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await inference.start()
        await inference([(None, blank_png(predictor.card.data_size))])  # warm-up: the first batch pays one-off costs
        state["ready"] = True
        yield
        state["ready"] = False
        await inference.stop()

    app = FastAPI(
        title="imgclf",
        description=f"{predictor.card.model} trained on {predictor.card.dataset}: top-k classes of images.",
        lifespan=lifespan,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)

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

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 when the model is loaded and warmed up (the server listens only then), 503 once it shuts down."""
        body = {"ready": state["ready"], "model": predictor.card.model, "runtime": predictor.runtime}
        return JSONResponse(body, 200 if state["ready"] else 503)

    @app.get("/info")
    async def info() -> dict:
        """The model card (classes, input side, preprocessing, temperature), the runtime and the limits."""
        info = {**predictor.card.to_dict(), "runtime": predictor.runtime, "calibrated": calibrated}
        if predictor.measured:  # auto chose the runtime: the images/second it measured for each
            info["measured_images_per_second"] = predictor.measured
        return {**info, "limits": dataclasses.asdict(limits)}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    predict_body = {
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

    @app.post("/predict", openapi_extra=predict_body)
    async def predict(request: Request) -> JSONResponse:
        """Top-k classes with probabilities (calibrated by the run's temperature) of each uploaded image."""
        if state["in_flight"] >= limits.max_concurrency:
            raise ServeError(503, f"busy: {limits.max_concurrency} requests in progress, retry shortly", "busy")
        state["in_flight"] += 1
        metrics.in_flight.inc()
        try:
            return JSONResponse(await answer(request))  # a dict of plain values: no response model to validate
        finally:
            state["in_flight"] -= 1
            metrics.in_flight.dec()

    async def answer(request: Request) -> dict:
        deadline = asyncio.get_running_loop().time() + limits.timeout_seconds
        try:
            async with asyncio.timeout_at(deadline):
                body = await read_body(request, limits.max_body_bytes)
        except TimeoutError:
            late = f"the request body did not arrive within {limits.timeout_seconds:g} s"
            raise ServeError(408, late, "timeout") from None
        uploads = await uploaded_images(request, body, limits)
        card = predictor.card
        try:
            async with asyncio.timeout_at(deadline):
                logits = await inference(uploads)
        except TimeoutError:
            late = f"the prediction took longer than {limits.timeout_seconds:g} s"
            raise ServeError(504, late, "timeout") from None
        metrics.images.inc(len(logits))
        probs = predictor.probabilities(logits, calibrated)
        tops = predictor.top_k(probs, limits.top_k)
        predictions = [
            {"filename": name, "top": [{"class": c, "probability": round(p, 6)} for c, p in top]}
            for (name, _), top in zip(uploads, tops, strict=True)
        ]
        calibrated_now = calibrated and predictor.temperature is not None
        return {"model": card.model, "calibrated": calibrated_now, "predictions": predictions}

    return app


def serving_predictor(source: str | Path, device: str = "cpu", runtime: str = "auto") -> Predictor:
    """The predictor ``imgclf serve`` runs. On a CPU, ``auto`` serves a run through PyTorch or onnxruntime, whichever
    answers single images faster here (measured at start-up); a run without a current export of its own is exported
    to the ONNX cache first and checked against PyTorch. Where that export fails, PyTorch serves, with a warning."""
    from imgclf.device import select_device
    from imgclf.inference.predictor import load_predictor, run_onnx
    from imgclf.runs import RunDir

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
    from imgclf.inference.export import export_run
    from imgclf.inference.predictor import weights_digest
    from imgclf.runs import BEST_WEIGHTS

    path = cache_dir("onnx") / f"{weights_digest(run.file(BEST_WEIGHTS))[:24]}.onnx"
    if not path.is_file():
        side = run.read_card().data_size if run.read_card() else 32
        images = torch.randint(
            0, 256, (64, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )
        export_run(run.path, path, images=images)
    return path


def serve(source: str | Path, host: str, port: int, limits: Limits, device="auto", runtime="auto", raw=False) -> None:
    """Load the model and serve it with uvicorn until interrupted."""
    import uvicorn

    predictor = serving_predictor(source, device, runtime)
    app = create_app(predictor, limits, calibrated=not raw)
    print(f"serving {predictor.card.model} ({runtime_note(predictor)}) on http://{host}:{port} — the page is at /")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_keep_alive=5)
