"""`imgclf predict` as a stream: inputs found lazily in a fixed order, each file once, and an interrupted --output
resumed after its last complete row to the file an uninterrupted run writes."""

import json
import types
from pathlib import Path

import pytest

from imgclf.artifacts.runs import RunDir
from imgclf.cli import main
from imgclf.inference.inputs import input_files
from imgclf.inference.predictor import Predictor


@pytest.fixture
def photos(tmp_path, folder_run):
    """A folder of 40 images in nested folders (copies of the run's images), a symlink loop, and a text file."""
    sources = sorted(Path(RunDir(folder_run).read_config().data).rglob("*.png"))
    root = tmp_path / "photos"
    for i in range(40):
        target = root / f"d{i % 3}" / f"img{i:02d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(sources[i % len(sources)].read_bytes())
    (root / "d1" / "loop").symlink_to(root)  # back up: not followed twice
    (root / "notes.txt").write_text("not an image")
    return root


def test_inputs_are_a_lazy_stream_in_a_fixed_order_each_file_once(photos):
    stream = input_files([str(photos)])
    assert isinstance(stream, types.GeneratorType)
    files = [p for p, reason in stream if not reason]
    assert len(files) == 40 and files == sorted(files)  # d0/…, d1/…, d2/…: sorted names in sorted folders
    again = [p for p, _ in input_files([str(photos / "d1"), str(photos), str(photos / "d0" / "img00.png")])]
    assert sorted(again) == sorted(files)  # a folder or file inside a folder given is that folder's
    missing = list(input_files([str(photos / "none.png"), str(photos / "*.jpg")]))
    assert [reason for _, reason in missing] == ["no such file or folder", "no file matches this pattern"]


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_an_interrupted_output_resumes_to_the_uninterrupted_file(folder_run, photos, tmp_path, monkeypatch, kind):
    base = ["predict", str(folder_run), str(photos), "--format", kind, "--batch-size", "8", "--no-progress"]
    whole = tmp_path / f"whole.{kind}"
    assert main([*base, "--output", str(whole)]) == 0
    assert not (tmp_path / f"whole.{kind}.partial").exists()

    cut = tmp_path / f"cut.{kind}"
    original, calls = Predictor.logits, [0]

    def interrupted(self, images, flip_tta=False):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return original(self, images, flip_tta)

    monkeypatch.setattr(Predictor, "logits", interrupted)
    assert main([*base, "--output", str(cut)]) == 130
    monkeypatch.setattr(Predictor, "logits", original)
    partial = tmp_path / f"cut.{kind}.partial"
    assert not cut.exists() and partial.is_file()
    rows = partial.read_text().splitlines()
    assert len(rows) == 16 + (kind == "csv")  # two batches of 8 (and the header)
    with open(partial, "a") as handle:
        handle.write(rows[-1][: len(rows[-1]) // 2])  # a row cut short by the interruption
    assert main([*base, "--output", str(cut), "--resume"]) == 0
    assert cut.read_bytes() == whole.read_bytes() and not partial.exists()


def test_resume_refuses_what_it_cannot_continue(folder_run, photos, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    base = ["predict", str(folder_run), str(photos), "--no-progress"]
    assert main([*base, "--resume"]) == 2
    assert "--resume continues an --output file written as --format csv or jsonl" in capsys.readouterr().err
    assert main([*base, "--format", "jsonl", "--output", str(out), "--resume"]) == 2
    assert f"nothing to resume: {out}.partial does not exist" in capsys.readouterr().err
    (tmp_path / "p.jsonl.partial").write_text(json.dumps({"path": "elsewhere.png", "predictions": []}) + "\n")
    assert main([*base, "--format", "jsonl", "--output", str(out), "--resume"]) == 2
    assert "does not match these inputs: its row 1 is 'elsewhere.png'" in capsys.readouterr().err


def test_a_csv_interrupted_after_its_header_keeps_one_header(folder_run, photos, tmp_path):
    base = ["predict", str(folder_run), str(photos), "--format", "csv", "--no-progress"]
    whole, cut = tmp_path / "whole.csv", tmp_path / "cut.csv"
    assert main([*base, "--output", str(whole)]) == 0
    header = whole.read_bytes().partition(b"\r\n")[0] + b"\r\n"  # the csv module ends rows with CRLF
    (tmp_path / "cut.csv.partial").write_bytes(header)
    assert main([*base, "--output", str(cut), "--resume"]) == 0
    assert cut.read_bytes() == whole.read_bytes()
