"""Label files (CSV, TSV, JSONL) as datasets: formats, hostile shapes, and the whole path of a run on one."""

import json
import os
import time
import tracemalloc

import numpy as np
import pytest
from folders import BAD_FILES, write_bad_files, write_images

from imgclf.cli import main
from imgclf.core.errors import ImgclfError
from imgclf.data.labelfile import LabelFormat, read_label_file, scan_label_file
from imgclf.data.sources import load_splits

CLASSES = ["cat", "dog", "zebra"]


def opaque_images(root, per_class: int, seed: int = 0) -> list[tuple[str, str]]:
    """``images/`` of opaque names (as annotation tools export them): [(relative path, class)] in a shuffled order."""
    rng = np.random.default_rng(seed)
    rows = []
    for index, name in enumerate(CLASSES):
        for path in write_images(root / "images", index, per_class, rng, prefix=f"{name[0]}{index}-"):
            opaque = path.with_name(f"{rng.integers(1 << 40):011x}{path.suffix}")
            path.rename(opaque)
            rows.append((f"images/{opaque.name}", name))
    return [rows[i] for i in rng.permutation(len(rows))]


def write_csv(path, header: str, rows, sep: str = ",", end: str = "\n", bom: bool = False) -> os.PathLike:
    """A label file of ``header`` and ``rows`` (tuples joined by ``sep``)."""
    lines = [header, *(sep.join(r) for r in rows)]
    path.write_bytes(("\ufeff" if bom else "").encode() + (end.join(lines) + end).encode())
    return path


def splits_of(source, prepare_dir, **options):
    defaults = dict(seed=0, val_fraction=0.2, test_fraction=0.2, prepare_dir=str(prepare_dir), progress=False)
    return load_splits(str(source), **{**defaults, **options})


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pets")
    return root, opaque_images(root, 8)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "csv-bom-crlf-quoted"])
def test_each_format_reads_the_same_dataset(pets, tmp_path, fmt):
    root, rows = pets
    if fmt == "jsonl":
        path = root / "labels.jsonl"
        path.write_text("".join(json.dumps({"image": f, "label": c}) + "\n" for f, c in rows))
    elif fmt == "tsv":
        path = write_csv(root / "labels.tsv", "path\tclass", rows, sep="\t")
    elif fmt == "csv":
        path = write_csv(root / "labels.csv", "file,label", rows)
    else:  # Excel's export: a byte-order mark, CRLF, every field quoted, one with a comma in it
        quoted = [(f'"{f}"', f'"{c}"') for f, c in rows]
        path = write_csv(root / "excel.csv", '"File","Label","notes, free text"', [(*r, '"a, b"') for r in quoted])
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n").replace(b'"File"', b'\xef\xbb\xbf"File"', 1))
    scan = scan_label_file(path)
    assert scan.classes == CLASSES and scan.layout == "label file" and scan.root == root
    assert sorted(zip(scan.files["all"], (CLASSES[i] for i in scan.labels["all"]), strict=True)) == sorted(rows)
    splits = splits_of(path, tmp_path)
    assert len(splits.train) + len(splits.val) + len(splits.test()) == len(rows) and splits.name == root.name
    assert set(splits.test().labels.tolist()) == set(splits.val.labels.tolist()) == {0, 1, 2}  # stratified
    assert splits.info["source"] == str(path) and splits.info["layout"] == "label file"


def test_a_split_column_is_used_as_given_and_columns_can_be_named(pets, tmp_path):
    root, rows = pets
    spelled = ["Training", "valid", "TEST"]
    nth = {c: [f for f, k in rows if k == c] for c in CLASSES}
    split = {f: spelled[nth[c].index(f) % 3] for f, c in rows}  # each class in each split
    path = write_csv(root / "split.csv", "img,y,split", [(f, c, split[f]) for f, c in rows])
    with pytest.raises(ImgclfError, match=r"no file column \(looked for file, path, image.*--file-column"):
        scan_label_file(path)
    with pytest.raises(ImgclfError, match="has no column 'picture'"):
        scan_label_file(path, LabelFormat("picture", "y"))
    splits = splits_of(path, tmp_path, fmt=LabelFormat("img", "y"))
    assert splits.lists["test"] == [f for f, _ in rows if split[f] == "TEST"]
    assert splits.lists["val"] == [f for f, _ in rows if split[f] == "valid"]


@pytest.mark.parametrize(
    "lines, message",
    [
        (["file,label", "images/a.png,cat", "images/a.png,dog"], r"lists images/a.png twice .*'cat' on line 2, 'dog'"),
        (["file,label,split", "x.png,cat,train", "x.png,cat,test"], "in two splits: train on line 2, test on line 3"),
        (["file,label,split", "x.png,cat,holdout"], "line 2: split 'holdout' is not train, val or test"),
        (["file,label,split", "x.png,cat,test", "y.png,dog,test"], "split column but no row of the train split"),
        (["name,label", "x.png,cat"], "has no file column"),
        (["file,kind", "x.png,cat"], "has no label column"),
        (["file,label", "x.png,cat,extra"], "line 2 has 3 fields, its header 2"),
        (["file,label", ",cat"], "line 2 names no file"),
        (["file,label", 'x.png,"cat'], "line 2"),
        (["file,label", "a.png,cat", "b.png,cat"], "lists one class, 'cat'"),
        ([], "is empty"),
        (["file,label"], "lists no images"),
    ],
)
def test_hostile_label_files_are_one_line_errors(tmp_path, lines, message):
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    with pytest.raises(ImgclfError, match=message) as error:
        scan_label_file(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"file": "a.png", "label": "cat"}\n{"file": "b.png"\n', "line 2 is not valid JSON"),
        (b'["a.png", "cat"]\n', "line 1 is not a JSON object"),
        (b'{"file": "a.png", "label": {"x": 1}}\n', "line 1: the label must be text or a number"),
        (b"file,label\nnai\xefve.png,cat\n", "is not UTF-8 text"),
    ],
)
def test_hostile_jsonl_and_encodings(tmp_path, content, message):
    path = tmp_path / ("labels.jsonl" if content.startswith((b"{", b"[")) else "labels.csv")
    path.write_bytes(content)
    with pytest.raises(ImgclfError, match=message):
        scan_label_file(path)


def test_missing_files_and_empty_labels_are_skipped_and_listed(pets, tmp_path, capsys):
    root, rows = pets
    (root / "bad").mkdir()
    write_bad_files(root / "bad", np.random.default_rng(0))
    extra = [(f"bad/{name}", "cat") for name in BAD_FILES] + [("images/gone.png", "dog"), ("images/x.png", "")]
    path = write_csv(root / "messy.csv", "file,label", rows + extra + [rows[0]])  # the first row again: fine
    splits = splits_of(path, tmp_path)
    skipped = {s["file"]: s["reason"] for s in splits.info["skipped"]}
    assert skipped.pop("images/x.png") == f"no label (line {len(rows) + len(extra) + 1})"
    assert skipped.pop("images/gone.png").startswith("unreadable (No such file")
    assert set(skipped) == {f"bad/{name}" for name in BAD_FILES}
    assert splits.info["files"] == len(rows) + len(extra) and splits.info["skipped_files"] == len(extra)
    assert len(splits.train) + len(splits.val) + len(splits.test()) == len(rows)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"skipped {len(extra)} of {len(rows) + len(extra)} files in {path}" in err[0]


def test_paths_outside_the_label_files_folder_are_read_and_said(pets, tmp_path, capsys):
    """Decision: absolute paths and ../ paths are allowed (annotation tools write both) — read as written, counted
    in data.json and named in one warning line, never silently."""
    root, rows = pets
    sub = root / "lists"
    sub.mkdir(exist_ok=True)
    moved = [(f"../{f}", c) for f, c in rows[:6]] + [(str(root / f), c) for f, c in rows[6:12]] + rows[12:]
    for f, _ in rows[12:]:  # these stay inside: copy them next to the list
        (sub / f).parent.mkdir(parents=True, exist_ok=True)
        (sub / f).write_bytes((root / f).read_bytes())
    splits = splits_of(write_csv(sub / "labels.csv", "file,label", moved), tmp_path)
    assert splits.info["outside_label_folder"] == 12 and splits.info["skipped_files"] == 0
    err = capsys.readouterr().err
    assert "12 paths in" in err and "lead outside its folder (e.g. ../images/" in err


def test_a_million_rows_are_read_in_bounded_memory(tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "w") as f:
        f.write("file,label\n")
        f.writelines(f"images/{i:07d}.jpg,class{i % 100}\n" for i in range(1_000_000))
    tracemalloc.start()
    start = time.perf_counter()
    entries, skipped = read_label_file(path, LabelFormat())
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(entries["all"]) == 1_000_000 and not skipped and entries["all"][7] == ("images/0000007.jpg", ("class7",))
    assert peak < 400 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # the rows kept, not the file's text as well
    assert seconds < 60


def test_train_evaluate_on_a_label_file_then_on_a_moved_copy(pets, tmp_path):
    """A run on a label file: the split saved, evaluate reads it, and a moved copy of the dataset evaluates the same."""
    import shutil

    root, rows = pets
    path = write_csv(root / "train.csv", "file,label", rows)
    common = ["--data", str(path), "--prepare-dir", str(tmp_path / "p"), "--output", str(tmp_path / "runs")]
    common += ["--batch-size", "8", "--no-progress", "--no-tensorboard", "--val-fraction", "0.2"]
    assert main(["train", "--model", "simple_cnn", "--name", "s", "--epochs", "1", *common]) == 0
    run = tmp_path / "runs" / "s"
    split, data = (json.loads((run / name).read_text()) for name in ("split.json", "data.json"))
    assert set(split["test"]) <= {f for f, _ in rows} and data["label_file"] == str(path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == CLASSES and metrics["test_images"] == len(split["test"])
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    assert main(["evaluate", str(run), "--data", str(moved / "train.csv")]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert again["test_accuracy"] == metrics["test_accuracy"] and again["test_images"] == len(split["test"])
    out = tmp_path / "explore"
    assert main(["explore", "--data", str(path), "--output", str(out), "--per-class", "2"]) == 0
    assert json.loads((out / "stats.json").read_text())["per_class"] == dict.fromkeys(CLASSES, 8)
