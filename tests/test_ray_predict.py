"""`imgclf predict … --ray`: the same predictions as plain predict, on a local Ray (2 CPUs) started by the test, as
CSV and Parquet files in input order; and what it refuses in one line."""

import csv
import io
import os
from pathlib import Path

import pyarrow.csv
import pyarrow.dataset
import pytest

from imgclf.artifacts.runs import RunDir
from imgclf.cli import main


@pytest.fixture
def images(tmp_path, folder_run) -> Path:
    """12 of the run's images in two folders, and a file that is no image."""
    sources = sorted(Path(RunDir(folder_run).read_config().data).rglob("*.png"))[:12]
    root = tmp_path / "images"
    for i, source in enumerate(sources):
        target = root / f"part{i % 2}" / f"{i:02d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    (root / "part1" / "broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of 2 CPUs on this machine, started once for the module (ray_predict leaves a running Ray alone)."""
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_gives_plain_predicts_rows_as_csv_and_parquet(folder_run, images, tmp_path, capsys, monkeypatch, local_ray):
    monkeypatch.chdir(images.parent)  # relative paths, as typed: Ray's workers run in folders of their own
    images = Path(images.name)
    assert main(["predict", str(folder_run), str(images), "--format", "csv", "--runtime", "torch"]) == 0
    expected = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(expected) == 13 and expected[-1]["error"] == "not an image"
    for kind in ("csv", "parquet"):
        out = tmp_path / f"scored-{kind}"
        args = ["predict", str(folder_run), str(images), "--ray", "--output", str(out), "--format", kind]
        assert main([*args, "--runtime", "torch", "--ray-actors", "1"]) == 0
        assert f"predicted 12 image(s) on Ray into {out} ({kind} files); skipped 1" in capsys.readouterr().err
        files = sorted(out.iterdir())
        assert files and all(f.suffix == f".{kind}" for f in files)
        table = pyarrow.dataset.dataset(out, format=kind).to_table()
        rows = table.to_pylist()
        assert table.column_names == list(expected[0]) and len(rows) == len(expected)
        for got, want in zip(rows, expected, strict=True):  # the same order, classes and probabilities
            assert got["path"] == want["path"] and (got["error"] or "") == want["error"]
            for rank in range(1, 6):
                assert (got[f"class_{rank}"] or "") == want[f"class_{rank}"]
                if want[f"probability_{rank}"]:
                    assert got[f"probability_{rank}"] == pytest.approx(float(want[f"probability_{rank}"]), abs=2e-6)
                else:
                    assert got[f"probability_{rank}"] is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "--ray writes into a folder: name it with --output DIR"),
        (["--output", "{tmp}/out", "--explain", "{tmp}/maps"], "--explain runs without --ray"),
        (["--output", "{tmp}/out", "--format", "jsonl"], "--ray writes --format csv or parquet, not jsonl"),
        (["--output", "{tmp}/out", "--ray-actors", "0"], "--ray-actors must be a positive integer"),
        (["--output", "{tmp}/full"], "must be a new or empty folder"),
    ],
)
def test_ray_refuses_in_one_line(folder_run, images, tmp_path, capsys, flags, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.csv").write_text("x")
    args = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    assert main(["predict", str(folder_run), str(images), "--ray", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_plain_predict_refuses_parquet(folder_run, images, capsys):
    assert main(["predict", str(folder_run), str(images), "--format", "parquet"]) == 2
    assert "--format parquet is written by --ray" in capsys.readouterr().err


def test_pyarrow_reads_csv_nulls_as_empty_probabilities(tmp_path):
    """The skipped file's probabilities are empty CSV cells (null), not "nan"."""
    from imgclf.inference.ray_predict import arrow_table

    table = arrow_table({"path": ["a"], "class_1": [""], "probability_1": [None], "error": ["not an image"]})
    buffer = io.BytesIO()
    pyarrow.csv.write_csv(table, buffer)
    assert buffer.getvalue().decode().splitlines()[1] == '"a","",,"not an image"'
