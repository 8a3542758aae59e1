"""One request of ``imgclf serve``, from bytes to a batch: its body read under a size limit, its images taken from a
raw body or a multipart form, decoded like the training images — and the one inference thread that predicts every
request waiting for it as one batch. What is refused is a :class:`ServeError`: an HTTP status, a one-line message and
a reason label for the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from fastapi import Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from imgclf.data.decode import BadImage, decode
from imgclf.inference.options import Limits

if TYPE_CHECKING:  # the server answers /health before torch is imported
    from imgclf.inference.predictor import Predictor

RAW_TYPES = ("image/", "application/octet-stream")
PATHS = ("/", "/predict", "/health", "/ready", "/metrics", "/info", "/docs", "/openapi.json")  # labelled by name
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


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
