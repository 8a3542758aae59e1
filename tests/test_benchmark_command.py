"""`imgclf benchmark RUN`: every runtime × precision measured on the validation split, written to benchmark.json,
and used by `imgclf serve --runtime auto` while it matches the run's weights."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from imgclf.artifacts.runs import RunDir, run_splits
from imgclf.cli import main
from imgclf.core import onnx
from imgclf.core.device import cpu_has_native_bf16
from imgclf.core.onnx import openvino_installed, openvino_version
from imgclf.data.images import Splits
from imgclf.evaluation import benchmark
from imgclf.inference import load, serving
from imgclf.inference.load import load_predictor
from imgclf.inference.serving import serving_predictor


@pytest.fixture(scope="module")
def benchmarked(folder_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("bench") / "run"
    shutil.copytree(folder_run, run, ignore=shutil.ignore_patterns(".lock", "model*.onnx", "*.parity.json"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(benchmark, "LATENCY_CALLS", 40)  # the figures' meaning, not their precision, is tested here
        patch.setattr(benchmark, "THROUGHPUT_SECONDS", 0.2)
        patch.setattr(Splits, "test", lambda self: (_ for _ in ()).throw(AssertionError("read the test split")))
        assert main(["benchmark", str(run), "--batch-size", "16"]) == 0
    return run


def test_every_format_is_measured_and_written(benchmarked, capsys):
    record = json.loads((benchmarked / "benchmark.json").read_text())
    names = [r["name"] for r in record["rows"]]
    bf16 = cpu_has_native_bf16()
    int8 = "model.int8.onnx" not in record["missing"]  # the int8 rows are there where its gate passed
    expected = ["torch fp32", *(["torch bf16"] if bf16 else []), "onnxruntime fp32", *(["onnxruntime int8"] * int8)]
    if openvino_installed():
        expected += ["openvino fp32", *(["openvino bf16"] if bf16 else []), *(["openvino int8"] * int8)]
    assert names == expected
    assert record["openvino"] == openvino_version()
    for row in record["rows"]:
        assert 0 <= row["val_accuracy"] <= 1 and 0 < row["p50_ms"] <= row["p99_ms"] and row["images_per_second"] > 0
        assert row["bytes"] == (benchmarked / row["file"]).stat().st_size
    assert record["fastest_at_batch_1"] == min(record["rows"], key=lambda r: r["p50_ms"])["name"]
    served = min(record["rows"], key=lambda r: r["p50_ms"] + 15_000 / r["images_per_second"])
    assert record["served"] == served["name"]
    assert record["batch_size"] == 16 and record["validation_images"] > 0
    parity = json.loads((benchmarked / "model.parity.json").read_text())["parity"]
    assert parity["split"] == "validation" and parity["images"] == record["validation_images"] and parity["passed"]


def test_serve_auto_takes_the_fastest_row_while_it_is_current(benchmarked):
    record = json.loads((benchmarked / "benchmark.json").read_text())
    best = next(r for r in record["rows"] if r["name"] == record["served"])
    said = []
    predictor = serving_predictor(benchmarked, "cpu", say=said.append)
    assert predictor.runtime == best["runtime"] and predictor.measured is None  # no start-up race
    assert said == [
        f"loading {best['name']}, the fastest to serve in benchmark.json (p50 {best['p50_ms']:.2f} ms at batch 1, "
        f"{best['images_per_second']:,.0f} images/s in batches)"
    ]
    stale = {**record, "weights_sha1": "0" * 40}  # benchmarked before the weights changed: timed again instead
    (benchmarked / "benchmark.json").write_text(json.dumps(stale))
    try:
        assert set(serving_predictor(benchmarked, "cpu").measured) == {"onnxruntime", "torch"}
    finally:
        (benchmarked / "benchmark.json").write_text(json.dumps(record))


def test_benchmark_options_are_checked(folder_run, capsys):
    assert main(["benchmark", str(folder_run), "--batch-size", "0"]) == 2
    assert "--batch-size must be in 1..4096, got 0" in capsys.readouterr().err


def test_serve_auto_loads_an_openvino_row_at_its_precision(benchmarked):
    if not openvino_installed():
        pytest.skip("the optional openvino runtime is not installed")
    record = json.loads((benchmarked / "benchmark.json").read_text())
    chosen = {"p50_ms": 0.001, "images_per_second": 1e9}  # the fastest to serve, by far
    rows = [{**r, **chosen} if r["name"] == "openvino fp32" else r for r in record["rows"]]
    (benchmarked / "benchmark.json").write_text(json.dumps({**record, "rows": rows}))
    try:
        predictor = serving_predictor(benchmarked, "cpu")
        assert (predictor.runtime, predictor.precision) == ("openvino", "fp32")
    finally:
        (benchmarked / "benchmark.json").write_text(json.dumps(record))


def test_openvino_gives_onnxruntimes_logits(benchmarked):
    if not openvino_installed():
        pytest.skip("the optional openvino runtime is not installed")
    run = RunDir(benchmarked)
    images = run_splits(run.read_config(), run.read_split(), run.read_card()).val.images[:24]
    reference = load_predictor(run.file("model.onnx"), "cpu", "onnxruntime").logits(images)
    precisions = [("fp32", 1e-4), *([("bf16", 0.05)] if cpu_has_native_bf16() else [])]
    for precision, tolerance in precisions:
        got = load_predictor(run.file("model.onnx"), "cpu", "openvino", precision).logits(images)
        scale = float(np.abs(reference).max())
        assert got.shape == reference.shape and np.abs(got - reference).max() <= tolerance * scale
    record = json.loads((benchmarked / "benchmark.json").read_text())
    if "model.int8.onnx" not in record["missing"]:  # the int8 file passed its gate
        int8 = load_predictor(run.file("model.int8.onnx"), "cpu", "openvino")
        assert int8.logits(images).shape == reference.shape and int8.card.quantization


def test_openvino_missing_is_one_line_and_leaves_the_other_rows(benchmarked, monkeypatch, capsys, tmp_path):
    for module in (onnx, load, benchmark, serving):
        monkeypatch.setattr(module, "openvino_installed", lambda: False)
    image = tmp_path / "x.png"
    Image.new("RGB", (16, 16), "red").save(image)
    assert main(["predict", str(benchmarked), str(image), "--runtime", "openvino", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "imgclf: error: the openvino runtime is not installed: pip install 'imgclf[openvino]'"
    assert all(runtime != "openvino" for _, runtime, _, _ in benchmark.candidates("cpu"))
    record = json.loads((benchmarked / "benchmark.json").read_text())
    rows = [
        {**r, "p50_ms": 0.001, "images_per_second": 1e9} if r["runtime"] == "openvino" else r for r in record["rows"]
    ]
    (benchmarked / "benchmark.json").write_text(json.dumps({**record, "rows": rows}))
    try:  # a benchmark that chose OpenVINO, which is gone since: the fastest installed row serves
        assert serving_predictor(benchmarked, "cpu").runtime != "openvino"
    finally:
        (benchmarked / "benchmark.json").write_text(json.dumps(record))


def spins(predictor) -> bool:
    """Whether an onnxruntime predictor's intra-op threads spin between runs (onnxruntime's default)."""
    options = predictor.session.get_session_options()
    try:
        return options.get_session_config_entry("session.intra_op.allow_spinning") != "0"
    except Exception:  # onnxruntime raises for a key never set: its default, spinning
        return True


def test_served_onnxruntime_sessions_sleep_between_batches(benchmarked):
    served = serving_predictor(benchmarked, "cpu", runtime="onnxruntime")
    assert served.runtime == "onnxruntime" and not spins(served)
    assert spins(load_predictor(benchmarked, "cpu", "onnxruntime"))  # batch prediction keeps spinning
