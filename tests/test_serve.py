"""`imgclf serve`: the API through TestClient and through a real uvicorn process on loopback, hostile uploads (the
right 4xx, the server alive, its memory flat), micro-batching, and the page driven in Chromium."""

import asyncio
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgclf.artifacts.runs import RunDir
from imgclf.cli import main
from imgclf.core.errors import ImgclfError
from imgclf.data.decode import decode_file
from imgclf.inference import export as export_module
from imgclf.inference.app import create_app
from imgclf.inference.load import load_predictor
from imgclf.inference.options import Limits
from imgclf.inference.predictor import OnnxPredictor
from imgclf.inference.serving import serving_predictor

SERVER_LIMITS = ["--timeout", "2", "--max-concurrency", "3", "--max-body-mb", "8", "--max-images", "32"]
SERVER_LIMITS += ["--header-timeout", "2"]


def image_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def class_files(run: Path) -> list[Path]:
    """One test file of each class of the run."""
    run_dir = RunDir(run)
    folder = Path(run_dir.read_config().data)
    files = {}
    for name in run_dir.read_split()["test"]:
        files.setdefault(name.split("/")[0], folder / name)
    return list(files.values())


def expected_top(predictor, path: Path) -> str:
    card = predictor.card
    image = decode_file(path, card.data_size, card.resize)[0]
    return predictor.top_k(predictor.probabilities(predictor.logits(image[None])), 1)[0][0][0]


def run_async(coroutine):
    """Run ``coroutine`` to its end on a thread of its own (Playwright's sync API keeps an event loop on this one)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def exported_run(folder_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("served") / "run"
    shutil.copytree(folder_run, run)
    assert main(["export", str(run), "--check-images", "0"]) == 0
    return run


@contextlib.contextmanager
def serving(run: Path, log: Path, *flags: str):
    """`imgclf serve RUN FLAGS` in a process of its own on a free loopback port, ready: (base URL, process id)."""
    port = free_port()
    command = [sys.executable, "-m", "imgclf.cli", "serve", str(run), "--port", str(port), *flags]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not start: {log.read_text()}")
        time.sleep(0.2)
    try:
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(exported_run, tmp_path_factory):
    """`imgclf serve` of the exported run with tight limits: (base URL, process id)."""
    with serving(exported_run, tmp_path_factory.mktemp("server") / "server.log", *SERVER_LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def client(folder_run):
    predictor = load_predictor(folder_run, "cpu", runtime="torch")
    with TestClient(create_app(predictor, Limits(max_images=4, max_body_bytes=2_000_000))) as client:
        yield client, predictor


def test_api_through_testclient(client, folder_run):
    client, predictor = client
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True, "model": "simple_cnn", "runtime": "torch"}
    info = client.get("/info").json()
    assert info["classes"] == predictor.classes and info["temperature"] == predictor.temperature
    assert info["limits"]["max_images"] == 4
    files = class_files(folder_run)
    raw = client.post("/predict", content=files[0].read_bytes(), headers={"content-type": "image/png"})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["calibrated"] and body["predictions"][0]["filename"] is None
    assert body["predictions"][0]["top"][0]["class"] == expected_top(predictor, files[0])
    assert len(body["predictions"][0]["top"]) == 4  # top-5 of four classes
    form = client.post("/predict", files=[("files", (f.name, f.read_bytes(), "image/jpeg")) for f in files])
    predictions = form.json()["predictions"]
    assert [p["filename"] for p in predictions] == [f.name for f in files]
    assert [p["top"][0]["class"] for p in predictions] == [expected_top(predictor, f) for f in files]
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "image/*" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and '"classes": ["blue", "green", "red", "yellow"]' in page.text
    metrics = client.get("/metrics").text
    assert 'imgclf_requests_total{path="/predict",status="200"} 2.0' in metrics
    assert 'imgclf_request_seconds_count{path="/predict"} 2.0' in metrics
    assert "imgclf_images_total 5.0" in metrics


def hostile_cases(bomb: bytes) -> list[tuple[str, dict, int]]:
    """(name, httpx request options, expected status) of uploads a server meets from clients it cannot trust."""
    rgb = Image.new("RGB", (40, 30), (200, 30, 30))
    png, jpeg = image_bytes(rgb, "PNG"), image_bytes(rgb, "JPEG")
    sixteen = image_bytes(Image.fromarray(np.full((32, 32), 60_000, dtype=np.uint16)), "PNG")
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif = image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    apng = image_bytes(frames[0], "PNG", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6
    wide = image_bytes(Image.new("1", (8000, 6000)), "PNG")  # 48 M pixels: over the 40 M limit, a small file

    text_form = b'--b\r\nContent-Disposition: form-data; name="text"\r\n\r\nhello\r\n--b--\r\n'

    def raw(data: bytes, content_type: str | None = "image/png") -> dict:
        return {"content": data, "headers": {"content-type": content_type} if content_type else {}}

    def form(*parts) -> dict:
        return {"files": [("files", part) for part in parts]}

    return [
        ("empty body", raw(b""), 400),
        ("empty body, no content type", raw(b"", None), 400),
        ("text as text/plain", raw(b"hello", "text/plain"), 415),
        ("JSON", raw(b'{"image": "x"}', "application/json"), 415),
        ("image bytes as text/plain", raw(png, "text/plain"), 415),
        ("form-urlencoded", raw(b"a=1", "application/x-www-form-urlencoded"), 415),
        ("text as image/png", raw(b"this is not an image"), 422),
        ("random bytes", raw(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes()), 422),
        ("truncated JPEG", raw(jpeg[: len(jpeg) // 2], "image/jpeg"), 422),
        ("truncated PNG", raw(png[:60]), 422),
        ("JPEG header only", raw(b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"), 422),
        ("SVG", raw(b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml"), 422),
        ("PNG decompression bomb", raw(bomb), 413),
        ("48-megapixel PNG", raw(wide), 413),
        ("1×1 PNG", raw(image_bytes(Image.new("RGB", (1, 1)), "PNG")), 200),
        ("16-bit PNG", raw(sixteen), 200),
        ("CMYK JPEG", raw(image_bytes(rgb.convert("CMYK"), "JPEG"), "image/jpeg"), 200),
        ("animated GIF", raw(gif, "image/gif"), 200),
        ("animated PNG", raw(apng), 200),
        ("RGBA PNG", raw(image_bytes(rgb.convert("RGBA"), "PNG")), 200),
        ("grayscale JPEG", raw(image_bytes(rgb.convert("L"), "JPEG"), "image/jpeg"), 200),
        ("EXIF-rotated JPEG", raw(image_bytes(rgb, "JPEG", exif=exif), "image/jpeg"), 200),
        ("WebP", raw(image_bytes(rgb, "WEBP"), "image/webp"), 200),
        ("BMP", raw(image_bytes(rgb, "BMP"), "image/bmp"), 200),
        ("TIFF", raw(image_bytes(rgb, "TIFF"), "image/tiff"), 200),
        ("a PNG labelled JPEG", raw(png, "image/jpeg"), 200),
        ("octet-stream", raw(png, "application/octet-stream"), 200),
        ("form: 100 files at once", form(*[(f"{i}.png", png, "image/png") for i in range(100)]), 413),
        ("form: no file field", raw(text_form, "multipart/form-data; boundary=b"), 400),
        ("form: a bad file among good ones", form(("a.png", png, "image/png"), ("b.jpg", b"xx", "image/jpeg")), 422),
        ("form: an empty file", form(("empty.png", b"", "image/png")), 422),
        ("form: broken boundary", raw(b"--x\r\nnot a form", "multipart/form-data; boundary=y"), 400),
        ("form: odd file name", form(("名前 ☃.png", png, "image/png")), 200),
    ]


def raw_http(port: int, head: bytes, chunks=(), pause: float = 0.0) -> int:
    """Send ``head`` and ``chunks`` (``pause`` s apart) on one loopback connection; the response's status (0: the
    server closed or reset the connection without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        try:
            s.sendall(head)
            for chunk in chunks:
                s.sendall(chunk)
                time.sleep(pause)
        except OSError:  # the server answered and closed while we were still sending
            pass
        try:
            answer = s.recv(4096)
        except OSError:  # reset
            return 0
        return int(answer.split()[1]) if answer else 0


def in_flight(url: str) -> float:
    """The server's prediction requests in progress, from its metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return float(text.split("\nimgclf_in_flight_requests ")[1].split()[0])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_hostile_uploads_get_the_right_4xx_and_the_server_stays_up(server, tmp_path):
    url, pid = server
    port = int(url.rsplit(":", 1)[1])
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)  # 400 M pixels in a 50 kB file
    cases = hostile_cases(bomb.read_bytes())
    assert len(cases) >= 30
    big = b"\0" * (50 << 20)
    rounds, rss = 3, []
    for _ in range(rounds):
        wrong = []
        for name, request, status in cases:
            response = httpx.post(f"{url}/predict", timeout=30, **request)
            body = response.json()
            ok = response.status_code == status and (
                "predictions" in body if status == 200 else "\n" not in body["error"]
            )
            if not ok:
                wrong.append((name, response.status_code, response.text[:200]))
        # 50 MB bodies: declared (refused from the header) and chunked (refused while reading)
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n"
        assert raw_http(port, head % len(big), [big[: 1 << 16]]) == 413
        chunked = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
        piece = 1 << 20
        chunks = [b"%x\r\n" % piece + big[:piece] + b"\r\n" for _ in range(9)]  # 9 MB: over the 8 MB limit
        assert raw_http(port, chunked, chunks) == 413
        assert raw_http(port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n") == 400
        assert httpx.get(f"{url}/predict").status_code == 405 and httpx.get(f"{url}/nothing").status_code == 404
        assert not wrong, wrong
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        rss.append(rss_bytes(pid))
    assert rss[-1] - rss[0] < 48 << 20, rss  # memory flat: the later rounds add (almost) nothing
    metrics = httpx.get(f"{url}/metrics").text
    assert 'imgclf_errors_total{reason="bad_image"}' in metrics and 'imgclf_errors_total{reason="too_large"}' in metrics


def test_slow_clients_time_out_and_excess_requests_are_turned_away(server, exported_run):
    """Slow uploads get 408 after the timeout (2 s here) while other requests are answered; beyond the concurrency
    limit (3 here) a request gets 503 with Retry-After."""
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
    results = []

    async def main_flow() -> None:
        loop = asyncio.get_running_loop()
        slow = [loop.run_in_executor(None, raw_http, port, head, [b"\x89PNG"] * 6, 0.6) for _ in range(3)]
        while in_flight(url) < 3:  # the three slow uploads hold every slot
            await asyncio.sleep(0.05)
        busy = await loop.run_in_executor(None, lambda: httpx.post(f"{url}/predict", content=b"x", timeout=10))
        health = await loop.run_in_executor(None, lambda: httpx.get(f"{url}/health", timeout=5))
        results.extend([busy.status_code, busy.headers.get("retry-after"), health.status_code])
        results.extend(await asyncio.gather(*slow))

    run_async(main_flow())
    assert results == [503, "1", 200, 408, 408, 408]
    # a client that goes away in the middle of its upload: counted, and nothing else happens
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head + b"\x89PNG")
    deadline = time.monotonic() + 10
    while 'imgclf_errors_total{reason="disconnect"} 1.0' not in httpx.get(f"{url}/metrics").text:
        assert time.monotonic() < deadline, "the disconnect was not counted"
        time.sleep(0.1)
    good = class_files(exported_run)[0]
    response = httpx.post(f"{url}/predict", content=good.read_bytes(), headers={"content-type": "image/png"})
    assert response.status_code == 200  # the slots are free again


def seconds_until_closed(s: socket.socket, data: bytes, pause: float, limit: float) -> float:
    """Send ``data`` on ``s`` a byte every ``pause`` s; the seconds until the server closed it (or ``limit``)."""
    start = time.monotonic()
    s.setblocking(False)
    for byte in data:
        try:
            s.sendall(bytes([byte]))
            if s.recv(4096) == b"":
                break
        except BlockingIOError:  # nothing to read: still open
            pass
        except OSError:  # reset: closed
            break
        if time.monotonic() - start > limit:
            break
        time.sleep(pause)
    return time.monotonic() - start


def test_request_heads_are_bounded_in_size_count_and_time(server):
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    start = b"GET /health HTTP/1.1\r\nHost: x\r\n"
    assert raw_http(port, start + b"X-Big: " + b"a" * 30_000 + b"\r\n\r\n") == 400  # one read: a whole head
    assert raw_http(port, start + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n") in (400, 0)  # 0: reset mid-send
    assert raw_http(port, start + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n") == 400  # 1.5 KB
    assert raw_http(port, start + b"".join(b"X-%d: y\r\n" % i for i in range(90)) + b"\r\n") == 200
    # slowloris: a head of valid header lines trickling in is cut at the header timeout (2 s here)
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        trickle = start + b"".join(b"X-%d: y\r\n" % i for i in range(80))
        assert 1.5 < seconds_until_closed(s, trickle, 0.1, limit=8) < 6
    # … and so is a body that keeps trickling in after the server has answered from its header (413)
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 999999999\r\n\r\n")
        assert int(s.recv(4096).split()[1]) == 413
        assert seconds_until_closed(s, b"x" * 80, 0.1, limit=8) < 6
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def test_real_server_predicts_like_the_model(server, exported_run):
    url, _ = server
    predictor = load_predictor(exported_run, "cpu", runtime="onnxruntime")
    for path in class_files(exported_run):
        response = httpx.post(f"{url}/predict", files=[("files", (path.name, path.read_bytes(), "image/png"))])
        assert response.status_code == 200
        assert response.json()["predictions"][0]["top"][0]["class"] == expected_top(predictor, path)
    info = httpx.get(f"{url}/info").json()  # auto: the faster runtime on single images, measured at start-up
    measured = info["measured_images_per_second"]
    assert set(measured) == {"onnxruntime", "torch"} and info["runtime"] == max(measured, key=measured.get)


def test_the_page_in_chromium(server, exported_run, browser, tmp_path):
    """A person drops an image on the page (the file picker here) and sees its class with the top-k bars."""
    url, _ = server
    path = class_files(exported_run)[2]
    expected = expected_top(load_predictor(exported_run, "cpu"), path)
    page = browser.new_page(viewport={"width": 900, "height": 700})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url, wait_until="load")
    assert page.locator("#title").inner_text() == "simple_cnn"
    page.set_input_files("#file", str(path))
    result = page.locator(".prediction").first
    result.wait_for(timeout=15_000)
    assert result.get_attribute("data-top") == expected
    assert page.locator(".bar").count() == 4 and page.locator(".bar .label").first.inner_text() == expected
    top = float(page.locator(".bar .pct").first.inner_text().rstrip("%")) / 100
    fill, track = (page.locator(f".bar .{part}").first.bounding_box()["width"] for part in ("fill", "track"))
    assert fill == pytest.approx(top * track, abs=2)  # the bar is drawn as long as the probability says
    assert page.locator(".result img").first.evaluate("img => img.complete && img.naturalWidth > 0")
    page.set_input_files("#file", str(Path(__file__)))  # not an image: the page shows the server's one-line error
    page.locator(".status.error").first.wait_for(timeout=15_000)
    assert "not a usable image" in page.locator(".status.error").first.inner_text()
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:4] == b"\x89PNG" and not errors
    page.close()


def test_the_page_shows_a_heatmap_in_chromium(server, exported_run, browser):
    """With the switch on, the page asks for the Grad-CAM heatmap and draws it over the image; its button hides it."""
    url, _ = server
    page = browser.new_page(viewport={"width": 900, "height": 700})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url, wait_until="load")
    page.check("#explain")
    page.set_input_files("#file", str(class_files(exported_run)[0]))
    layer = page.locator(".picture img.heatmap").first
    layer.wait_for(timeout=15_000)
    assert layer.evaluate("img => img.src.startsWith('data:image/png') && img.complete && img.naturalWidth === 224")
    shown, under = layer.bounding_box(), page.locator(".picture img:not(.heatmap)").first.bounding_box()
    assert (shown["x"], shown["y"], shown["width"]) == (under["x"], under["y"], under["width"])  # over the image
    page.locator(".picture button").first.click()
    assert layer.is_hidden() and page.locator(".picture button").first.inner_text() == "show heatmap"
    assert not errors
    page.close()


def test_micro_batching_gathers_concurrent_requests(folder_run):
    predictor = load_predictor(folder_run, "cpu", runtime="torch")
    app = create_app(predictor, Limits(batch_window_ms=50, max_batch=16))
    files = class_files(folder_run)

    async def flow() -> tuple[list, str]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                requests = [
                    client.post("/predict", content=files[i % 4].read_bytes(), headers={"content-type": "image/png"})
                    for i in range(8)
                ]
                responses = await asyncio.gather(*requests)
                return responses, (await client.get("/metrics")).text

    responses, metrics = run_async(flow())
    tops = [r.json()["predictions"][0]["top"][0]["class"] for r in responses]
    assert tops == [expected_top(predictor, files[i % 4]) for i in range(8)]
    count = float(metrics.split("imgclf_batch_images_count ")[1].split()[0])
    total = float(metrics.split("imgclf_batch_images_sum ")[1].split()[0])
    assert total == 9 and count < 9  # 1 warm-up image + 8 requests in fewer batches than requests


def test_auto_runtime_exports_to_the_cache(folder_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(folder_run, run)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    predictor = serving_predictor(run, "cpu")
    assert set(predictor.measured) == {"onnxruntime", "torch"}  # chosen by measuring both on single images
    assert predictor.temperature == RunDir(run).read_card().temperature
    assert isinstance(serving_predictor(run, "cpu", "onnxruntime"), OnnxPredictor)
    assert len(list((tmp_path / "home" / ".cache" / "imgclf" / "onnx").glob("*.onnx"))) == 1
    assert not (run / "model.onnx").exists()  # the run directory is left as it was
    parity = json.loads(next((tmp_path / "home" / ".cache" / "imgclf" / "onnx").glob("*.parity.json")).read_text())
    assert parity["parity"]["passed"] and parity["parity"]["images"] == 64  # checked, on random images


def test_auto_runtime_falls_back_to_pytorch_when_the_export_fails(folder_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(folder_run, run)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(export_module, "export_network", lambda *a, **k: (_ for _ in ()).throw(ImgclfError("no")))
    predictor = serving_predictor(run, "cpu")
    assert (
        predictor.runtime == "torch" and "serving with PyTorch, the ONNX export failed: no" in capsys.readouterr().err
    )
    with pytest.raises(ImgclfError, match="no"):
        serving_predictor(run, "cpu", "onnxruntime")  # asked for by name: the failure is the answer


def test_the_application_starts_again_after_a_stop(folder_run):
    app = create_app(load_predictor(folder_run, "cpu", runtime="torch"))
    image = class_files(folder_run)[0].read_bytes()
    for _ in range(2):  # e.g. a test client opened twice, or a server restarted in-process
        with TestClient(app) as client:
            assert client.post("/predict", content=image, headers={"content-type": "image/png"}).status_code == 200


def test_serve_options_default_to_the_limits_exactly():
    from imgclf.cli import build_parser, serve_limits

    limits = serve_limits(build_parser().parse_args(["serve", "RUN"]))
    assert limits == Limits() and all(type(getattr(limits, f)) is type(getattr(Limits(), f)) for f in vars(limits))
    limits = serve_limits(build_parser().parse_args(["serve", "RUN", "--max-body-mb", "2.5", "--top-k", "3"]))
    assert limits.max_body_bytes == 2_500_000 and limits.top_k == 3


@pytest.mark.parametrize(
    "args,message",
    [
        (["--max-body-mb", "0"], "--max-body-mb must be a positive number"),
        (["--timeout", "nan"], "--timeout must be a positive number"),
        (["--port", "70000"], "--port must be in 0..65535"),
        (["--batch-window-ms", "5000"], "--batch-window-ms must be in 0..1000"),
        (["--runtime", "tensorrt"], "invalid choice"),
    ],
)
def test_serve_options_are_checked(folder_run, capsys, args, message):
    assert main(["serve", str(folder_run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) <= 2


def test_serve_refuses_what_is_not_a_model(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "none"), "--port", "0"]) == 2
    assert "no such run directory or model file" in capsys.readouterr().err
    (tmp_path / "notes.json").write_text(json.dumps({}))
    assert main(["serve", str(tmp_path / "notes.json"), "--port", "0"]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_serve_binds_before_it_loads_and_names_what_it_cannot_bind(folder_run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(folder_run), "--port", str(port)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"imgclf: error: cannot listen on 127.0.0.1:{port}: address already in use", err
    assert main(["serve", str(folder_run), "--host", "192.0.2.1", "--port", "0"]) == 2  # not this machine's
    err = capsys.readouterr().err.strip()
    assert err == "imgclf: error: cannot listen on 192.0.2.1:0: cannot assign requested address", err


def test_health_answers_while_the_model_loads_and_ready_turns_true_after(folder_run):
    """A loader that waits: /health is up at once, /ready, /predict, /info and the page say "loading" (503), and
    ``on_ready`` fires once the loaded model answers."""
    release, announced = threading.Event(), []

    def slow_loader():
        assert release.wait(30)
        return load_predictor(folder_run, "cpu", runtime="torch")

    app = create_app(slow_loader, on_ready=lambda predictor: announced.append(predictor.card.model))
    image = class_files(folder_run)[0].read_bytes()
    with TestClient(app) as client:
        assert client.get("/health").json() == {"status": "ok"}
        loading = client.get("/ready")
        assert loading.status_code == 503 and loading.json() == {"ready": False, "model": None, "runtime": None}
        refused = client.post("/predict", content=image, headers={"content-type": "image/png"})
        assert refused.status_code == 503 and "the model is loading" in refused.json()["error"]
        assert refused.headers["retry-after"] == "1"
        assert client.get("/info").status_code == 503
        page = client.get("/")
        assert page.status_code == 503 and "The model is loading" in page.text
        release.set()
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the model never became ready"
            time.sleep(0.05)
        assert announced == ["simple_cnn"]
        assert client.post("/predict", content=image, headers={"content-type": "image/png"}).status_code == 200
        assert "simple_cnn" in client.get("/").text


def test_serve_says_each_step_and_health_answers_before_ready(folder_run, tmp_path):
    """The real command on a run without an export: a line per step on stderr (listening, exporting, loading), /health
    answering before /ready, then one line on stdout with the start-up time."""
    run = tmp_path / "run"
    shutil.copytree(folder_run, run, ignore=shutil.ignore_patterns(".lock", "model.onnx*"))
    port = free_port()
    command = [sys.executable, "-m", "imgclf.cli", "serve", str(run), "--port", str(port)]
    env = {**os.environ, "HOME": str(tmp_path / "home")}  # an empty ONNX cache: the export happens now
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url, states, deadline = f"http://127.0.0.1:{port}", [], time.monotonic() + 90
    try:
        while not states or states[-1] != (200, 200):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate(timeout=5)
            try:
                health, ready = httpx.get(f"{url}/health", timeout=1), httpx.get(f"{url}/ready", timeout=1)
                states.append((health.status_code, ready.status_code))
            except httpx.TransportError:
                pass
            time.sleep(0.02)
    finally:
        process.terminate()
        out, err = process.communicate(timeout=20)
    assert (200, 503) in states, states  # up, loading: the health check did not wait for the model
    steps = [line for line in err.splitlines() if line.startswith("imgclf serve: ")]
    assert "listening on" in steps[0] and "exporting the weights to ONNX" in steps[1], err
    assert "timing the runtimes" in steps[2], err
    assert out.startswith("serving simple_cnn (") and "ready in" in out, out


def test_a_model_that_fails_to_load_stops_the_server_with_one_line(folder_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(folder_run, run, ignore=shutil.ignore_patterns(".lock", "model.onnx*"))
    (run / "best.safetensors").write_bytes(b"not weights")
    command = [sys.executable, "-m", "imgclf.cli", "serve", str(run), "--port", "0", "--runtime", "torch"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and result.stdout == "", result
    assert "listening on" in lines[0] and lines[-1].startswith("imgclf: error: ") and "best.safetensors" in lines[-1]
