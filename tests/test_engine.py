"""Every run says how it was computed — precision, layout, threads (policy and counts), compilation, BatchNorm
folding, the activation cache's engines — in its summary, its metrics and its card; compare shows where runs differ."""

import json

from imgclf.cli import main
from imgclf.report.table import engine_text


def test_a_run_records_its_engine_in_summary_metrics_and_card(tmp_path, tiny_options):
    options = [o for o in tiny_options if o != "--no-evaluate"]
    assert main(["train", "--model", "simple_cnn", "--epochs", "1", "--name", "r", "--threads", "1", *options]) == 0
    run = tmp_path / "r"
    summary = json.loads((run / "summary.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    card = json.loads((run / "model.json").read_text())
    engine = summary["engine"]
    assert engine["threads"] == {"policy": "fixed at 1", "counts": [1]}
    assert engine["precision"] in ("bf16", "fp32") and engine["channels_last"] is True
    assert engine["compile"] == "off: eager on a CPU (compiles on a GPU)"
    assert card["engine"] == engine
    assert metrics["engine"]["runtime"] == "torch" and metrics["engine"]["batchnorm_folded"] is True
    assert metrics["engine"]["precision"] == metrics["precision"]


def test_engine_in_words_and_the_compare_column_where_runs_differ(tmp_path, tiny_options):
    options = [*tiny_options, "--model", "simple_cnn", "--epochs", "1", "--test-subset", "200"]
    options = [o for o in options if o != "--no-evaluate"]
    assert main(["train", "--name", "one", "--threads", "1", *options]) == 0
    assert main(["train", "--name", "fp32", "--threads", "1", "--precision", "fp32", *options]) == 0
    assert main(["train", "--name", "two", "--threads", "1", *options]) == 0
    same = tmp_path / "same"
    assert main(["compare", str(tmp_path / "one"), str(tmp_path / "two"), "--output", str(same)]) == 0
    assert "engine" not in (same / "results.md").read_text().splitlines()[0]
    differ = tmp_path / "differ"
    assert main(["compare", str(tmp_path / "one"), str(tmp_path / "fp32"), "--output", str(differ)]) == 0
    header, _, first, second = (differ / "results.md").read_text().splitlines()[:4]
    assert header.rstrip(" |").endswith("engine (where runs differ)")
    assert first.rstrip(" |").endswith(
        engine_text(json.loads((tmp_path / "one" / "summary.json").read_text())["engine"])
    )
    assert second.rstrip(" |").endswith("fp32 · threads 1")
    assert engine_text(None) == "not recorded"
    cache = {"engines": ["onnxruntime"], "read": 0, "computed": 3, "fallbacks": []}
    assert engine_text({"precision": "bf16", "activation_cache": cache}) == "bf16 · cache onnxruntime"
