"""The HTTP application of ``imgclf serve`` (FastAPI): a trained model's routes, with a page to drop images on.

    POST /predict   one image as the raw body (Content-Type image/* or application/octet-stream), or several as
                    multipart/form-data file fields → {"predictions": [{"filename", "top": [{"class", "probability"}]}]}
                    (a multi-label model adds "labels": the classes at or above their thresholds; a card with an
                    abstain rule adds "answer": the top class, or "unknown" below its threshold); with
                    ?explain=1, each prediction adds "heatmap": the Grad-CAM overlay of its top class as a PNG data
                    URL, with the method and layer (``explain.py``)
    GET  /          the page: drop or pick an image, see it with its top-k bars
    GET  /health    the process is up;  GET /ready: the model is loaded and warmed up (503 before and at shutdown)
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

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import gc
import io
import json
import threading
from collections.abc import AsyncIterator, Callable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from imgclf.core.errors import ImgclfError
from imgclf.inference.options import Limits
from imgclf.inference.requests import (
    Inference,
    Metrics,
    MetricsMiddleware,
    ServeError,
    decode_all,
    read_body,
    uploaded_images,
)

if TYPE_CHECKING:  # torch is imported by the loader, once /health answers
    from imgclf.inference.explain import Explainer
    from imgclf.inference.predictor import Predictor

YES, NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")  # ?explain=


def blank_png(side: int) -> bytes:
    """A black square PNG: the warm-up request."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side)).save(buffer, "PNG")
    return buffer.getvalue()


def page_html(predictor: Predictor, explainable: bool) -> str:
    """The page, with the model's name, dataset and classes filled in (and the heatmap switch when ``explainable``)."""
    info = {"model": predictor.card.model, "dataset": predictor.card.dataset, "classes": predictor.classes}
    info["explain"] = explainable
    template = files("imgclf.inference").joinpath("page.html").read_text(encoding="utf-8")
    return template.replace("{{INFO}}", json.dumps(info).replace("</", "<\\/"))


class Service:
    """What the routes of :func:`create_app` answer with: the predictor (or what loads it, in the background, while
    /health already answers), its inference thread, the limits, readiness and the requests in flight."""

    def __init__(self, model: Predictor | Callable[[], Predictor], limits: Limits, calibrated: bool, **hooks) -> None:
        loaded = not callable(model)  # a predictor, or a function that loads one
        self.predictor, self.loader = (model, None) if loaded else (None, model)
        self.limits, self.calibrated = limits, calibrated
        self.source = hooks.get("source")  # the weights heatmaps are computed with, when the predictor is not PyTorch
        self.explainer: Explainer | None = None  # built by the first request for a heatmap
        self.explainer_lock = threading.Lock()
        self.on_ready, self.on_failure = hooks.get("on_ready"), hooks.get("on_failure")
        self.metrics = Metrics()
        self.inference: Inference | None = None
        self.ready, self.in_flight, self.page = False, 0, ""
        self.loading: asyncio.Task | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """A loaded predictor is warmed up before the server answers; a loader runs in the background instead, so
        /health and /ready answer while the model loads."""
        if self.loader is None:
            await self.start()
        else:
            self.loading = asyncio.create_task(self.load())
        yield
        self.ready = False
        gc.unfreeze()  # start() froze what loading made: the interpreter frees it at exit
        if self.loading is not None:
            self.loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loading
        if self.inference is not None:
            await self.inference.stop()

    async def load(self) -> None:
        """Load the model on a thread of its own, then start: ``on_ready`` when it answers, ``on_failure`` with the
        error. The thread is a daemon: a server stopped while it loads does not wait for it."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(result: Predictor | None, error: BaseException | None) -> None:
            if future.done():  # the server stopped meanwhile
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def work() -> None:
            try:
                result, error = self.loader(), None
            except BaseException as exc:  # handed to the event loop, which reports it
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(settle, result, error)

        threading.Thread(target=work, name="imgclf-load", daemon=True).start()
        try:
            self.predictor = await future
            await self.start()
        except Exception as exc:
            if self.on_failure is None:
                raise
            self.on_failure(exc)
            return
        if self.on_ready is not None:
            self.on_ready(self.predictor)

    async def start(self) -> None:
        """Start the inference thread and warm it up (the first batch pays one-off costs); then the server is ready."""
        self.inference = Inference(self.predictor, self.limits, self.metrics)
        self.page = page_html(self.predictor, self.explainable)
        await self.inference.start()
        await self.inference([(None, blank_png(self.predictor.card.data_size))])
        # what loading made (modules, the network) leaves the collector's sight: its full collections then walk only
        # what requests create; they had stalled the server ~70 ms at a time: ResNet-20's p99 at concurrency 32 was
        # 103 ms, 33 ms frozen (benchmarks/results/serve_numpy_prepare.json, serve_gc_freeze.json)
        gc.collect()
        gc.freeze()
        self.ready = True

    @property
    def explainable(self) -> bool:
        """True when heatmaps can be computed: the model runs in PyTorch, or PyTorch weights are at hand."""
        from imgclf.inference.explain import explainable

        return explainable(self.source, self.predictor)

    def heatmaps(self, uploads: list[tuple[str | None, bytes]], targets: list[int]) -> list[dict]:
        """On a worker thread: the Grad-CAM overlay of each upload for its class in ``targets``, as PNG data URLs (the
        explainer is built on the first request that asks)."""
        from imgclf.inference.explain import load_explainer, overlay, png_bytes

        if not self.explainable:
            raise ServeError(
                400, "this server has no PyTorch weights to explain with: serve the run directory", "explain"
            )
        with self.explainer_lock:
            if self.explainer is None:
                try:
                    self.explainer = load_explainer(self.source or "", self.predictor)
                except ImgclfError as exc:
                    raise ServeError(400, f"cannot explain: {exc}", "explain") from None
        card, limits = self.predictor.card, self.limits
        images = decode_all(uploads, card.data_size, card.resize, limits.max_pixels)
        record = self.explainer.record()
        pictures = [overlay(i, m) for i, m in zip(images, self.explainer.maps(images, targets), strict=True)]
        urls = ["data:image/png;base64," + base64.b64encode(png_bytes(p)).decode("ascii") for p in pictures]
        return [{"class": self.predictor.classes[t], **record, "png": u} for t, u in zip(targets, urls, strict=True)]

    def loaded(self) -> Predictor:
        """The predictor; a 503 (retry shortly) while it is still loading."""
        if not self.ready:
            raise ServeError(503, "the model is loading: retry shortly (GET /ready says when)", "loading")
        return self.predictor

    def readiness(self) -> JSONResponse:
        """200 when the model is loaded and warmed up, else 503 (while it loads, and once the server shuts down)."""
        if self.predictor is None or self.inference is None:
            return JSONResponse({"ready": False, "model": None, "runtime": None}, 503)
        body = {"ready": self.ready, "model": self.predictor.card.model, "runtime": self.predictor.runtime}
        return JSONResponse(body, 200 if self.ready else 503)

    def info(self) -> dict:
        """The model card (classes, input side, preprocessing, temperature), the runtime and the limits."""
        from imgclf.inference.load import runtime_note

        predictor = self.loaded()
        info = {**predictor.card.to_dict(), "runtime": predictor.runtime, "calibrated": self.calibrated}
        if predictor.measured:  # auto chose the runtime: the images/second it measured for each
            info["measured_images_per_second"] = predictor.measured
        info["runtime_note"] = runtime_note(predictor)
        return {**info, "limits": dataclasses.asdict(self.limits)}

    async def predict(self, request: Request) -> JSONResponse:
        """A request's predictions, refused with 503 while the model loads or beyond ``max_concurrency`` requests in
        flight."""
        self.loaded()
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
        explain = request.query_params.get("explain", "").lower()
        if explain not in YES + NO:
            raise ServeError(422, f"explain must be 1 or 0, got {explain[:20]!r}", "bad_request")
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
                wanted = explain in YES
                heatmaps = await asyncio.to_thread(self.heatmaps, uploads, logits.argmax(1).tolist()) if wanted else []
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
        for prediction, answer in zip(predictions, predictor.answers(logits) or [], strict=False):
            prediction["answer"] = answer
        for prediction, heatmap in zip(predictions, heatmaps, strict=False):
            prediction["heatmap"] = heatmap
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


LOADING_PAGE = (
    '<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="1"><title>imgclf</title>'
    '<p style="font:16px system-ui;margin:40px">The model is loading; this page reloads itself.</p>'
)


def create_app(
    model: Predictor | Callable[[], Predictor],
    limits: Limits | None = None,
    calibrated: bool = True,
    on_ready=None,
    on_failure=None,
    source: str | Path | None = None,
) -> FastAPI:
    """The FastAPI application serving ``model`` under ``limits``: a predictor, or a function that loads one (called
    on a thread once the server runs; ``on_ready(predictor)`` when it answers, ``on_failure(exc)`` if loading
    fails). ``source``: the run directory or weights file heatmaps are computed with when the predictor is not
    PyTorch's."""
    service = Service(model, limits or Limits(), calibrated, on_ready=on_ready, on_failure=on_failure, source=source)
    description = "Top-k classes of images, with a model trained by imgclf (GET /info describes it)."
    app = FastAPI(title="imgclf", description=description, lifespan=service.lifespan)
    app.state.service = service
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    add_error_handlers(app, service.metrics)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(service.page) if service.ready else HTMLResponse(LOADING_PAGE, 503)

    @app.get("/health")
    async def health() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 when the model is loaded and warmed up, else 503 (while it loads, and once the server shuts down)."""
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
        """Top-k classes with probabilities (calibrated by the run's temperature) of each uploaded image; with
        ``?explain=1``, the Grad-CAM heatmap of its top class too (a PNG data URL)."""
        return await service.predict(request)

    return app
