"""`imgclf benchmark RUN`: every runtime × precision measured on the validation split, written to benchmark.json,
and used by `imgclf serve --runtime auto` while it matches the run's weights."""

import json
import shutil

import pytest

from imgclf.cli import main
from imgclf.core.device import cpu_has_native_bf16
from imgclf.data.images import Splits
from imgclf.evaluation import benchmark
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
    expected = ["torch fp32", *(["torch bf16"] if cpu_has_native_bf16() else []), "onnxruntime fp32"]
    assert names[: len(expected)] == expected  # the int8 row follows where its gate passed
    assert names[len(expected) :] in ([], ["onnxruntime int8"])
    assert ("onnxruntime int8" in names) == ("model.int8.onnx" not in record["missing"])
    for row in record["rows"]:
        assert 0 <= row["val_accuracy"] <= 1 and 0 < row["p50_ms"] <= row["p99_ms"] and row["images_per_second"] > 0
        assert row["bytes"] == (benchmarked / row["file"]).stat().st_size
    assert record["fastest_at_batch_1"] == min(record["rows"], key=lambda r: r["p50_ms"])["name"]
    assert record["batch_size"] == 16 and record["validation_images"] > 0


def test_serve_auto_takes_the_fastest_row_while_it_is_current(benchmarked):
    record = json.loads((benchmarked / "benchmark.json").read_text())
    best = min(record["rows"], key=lambda r: r["p50_ms"])
    said = []
    predictor = serving_predictor(benchmarked, "cpu", say=said.append)
    assert predictor.runtime == best["runtime"] and predictor.measured is None  # no start-up race
    assert said == [f"loading {best['name']}, the fastest at batch 1 in benchmark.json (p50 {best['p50_ms']:.2f} ms)"]
    stale = {**record, "weights_sha1": "0" * 40}  # benchmarked before the weights changed: timed again instead
    (benchmarked / "benchmark.json").write_text(json.dumps(stale))
    try:
        assert set(serving_predictor(benchmarked, "cpu").measured) == {"onnxruntime", "torch"}
    finally:
        (benchmarked / "benchmark.json").write_text(json.dumps(record))


def test_benchmark_options_are_checked(folder_run, capsys):
    assert main(["benchmark", str(folder_run), "--batch-size", "0"]) == 2
    assert "--batch-size must be in 1..4096, got 0" in capsys.readouterr().err
