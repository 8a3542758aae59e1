"""`imgclf audit` on a small folder of real CIFAR-10 images with planted problems: label flips, altered and exact
copies of training images in the test split, and noise images; then the page in Chromium."""

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from imgclf.analysis import copies, duplicates, labels, strays
from imgclf.analysis.neighbours import nearest_neighbours
from imgclf.cli import main

CLASSES = {"airplane": 0, "frog": 6, "truck": 9}
TRAIN, TEST = 40, 12
FLIPS = 6
BACKBONE = ["--backbone", "tf_efficientnet_lite0", "--side", "96", "--folds", "4"]


def save(image: np.ndarray, path: Path) -> str:
    """Write uint8 (3, H, W) ``image`` as a PNG at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(path)
    return path.as_posix()


def altered(image: Image.Image, kind: int) -> Image.Image:
    """``image`` as a copy of it is met: mirrored (0); brightened 10%, shifted 2 px and re-saved as JPEG at quality 55
    (1); shrunk to 80% and back, mirrored and re-saved at quality 65 (2)."""
    if kind == 0:
        return image.transpose(Image.FLIP_LEFT_RIGHT)
    if kind == 1:
        image = ImageEnhance.Brightness(image).enhance(1.1)
        image = image.transform(image.size, Image.AFFINE, (1, 0, 2, 0, 1, -1), fillcolor=(0, 0, 0))
    else:
        image = image.resize((26, 26), Image.BILINEAR).resize(image.size, Image.BILINEAR)
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=55 if kind == 1 else 65)
    return Image.open(buffer).convert("RGB")


@pytest.fixture(scope="module")
def planted(cifar_train, tmp_path_factory) -> dict:
    """DIR/train|test/<class>/ of real CIFAR-10 images, and the files planted in it: label flips in train, altered and
    exact copies of training images in test, noise images in train."""
    root = tmp_path_factory.mktemp("audit") / "planted"
    rng = np.random.default_rng(0)
    y = cifar_train.labels.numpy()
    facts = {"root": root, "flips": [], "copies": {}, "exact": {}, "noise": []}
    names = list(CLASSES)
    for name, c in CLASSES.items():
        rows = np.flatnonzero(y == c)[: TRAIN + TEST]
        for k, row in enumerate(rows):
            split = "train" if k < TRAIN else "test"
            save(cifar_train.images[row].numpy(), root / split / name / f"{row}.png")
    for k in range(FLIPS):  # move training images into another class's folder
        name = names[k % 3]
        source = sorted((root / "train" / name).iterdir())[k]
        target = root / "train" / names[(k + 1) % 3] / f"flipped_{source.name}"
        source.rename(target)
        facts["flips"].append(f"train/{names[(k + 1) % 3]}/{target.name}")
    for k, name in enumerate(names):  # an altered copy of a training image in test: mirrored, re-encoded, shifted…
        source = sorted((root / "train" / name).iterdir())[-1]
        facts["copies"][f"test/{name}/copy_{k}.png"] = f"train/{name}/{source.name}"
        altered(Image.open(source).convert("RGB"), k).save(root / "test" / name / f"copy_{k}.png")
    source = sorted((root / "train" / "truck").iterdir())[0]
    shutil.copy(source, root / "test" / "truck" / "exact.png")
    facts["exact"]["test/truck/exact.png"] = f"train/truck/{source.name}"
    for k in range(2):  # noise: no class at all
        noise = (
            rng.integers(0, 256, (3, 32 // (k + 1), 32 // (k + 1)), dtype=np.uint8).repeat(k + 1, 1).repeat(k + 1, 2)
        )
        save(noise, root / "train" / names[k] / f"noise_{k}.png")
        facts["noise"].append(f"train/{names[k]}/noise_{k}.png")
    return facts


@pytest.fixture(scope="module")
def audited(planted, tmp_path_factory):
    """The audit's report folder (its index of audits kept in the test's folder, not the user's cache)."""
    out = tmp_path_factory.mktemp("audit_out")
    patch = pytest.MonkeyPatch()
    patch.setattr("imgclf.artifacts.audits.INDEX", out / "index")
    args = ["audit", str(planted["root"]), "--output", str(out / "report"), *BACKBONE, "--no-progress"]
    args += ["--cache-dir", str(out / "cache"), "--prepare-dir", str(out / "prep")]
    assert main(args) == 0
    yield out / "report"
    patch.undo()


def read_rows(report: Path) -> list[dict]:
    with (report / "audit.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_the_audit_finds_what_was_planted(planted, audited):
    rows = read_rows(audited)
    assert list(rows[0]) == ["file", "split", "issue", "score", "given", "suggested", "other"]
    label = [r for r in rows if r["issue"] == "label"]
    found = {r["file"] for r in label}
    with open(audited / "scores.csv", newline="") as f:  # every image, ranked by the quality of its label
        ranked = [r["file"] for r in sorted(csv.DictReader(f), key=lambda r: float(r["label_quality"]))]
    assert len(set(ranked[: 2 * FLIPS]) & set(planted["flips"])) >= FLIPS - 1, ranked[: 2 * FLIPS]
    # flagged: as many as cleanlab estimates are wrong, cautious on 170 images
    assert len(found & set(planted["flips"])) >= 2 and len(found - set(planted["flips"])) <= 2, found
    assert all(r["suggested"] != r["given"] for r in label if r["file"] in planted["flips"])
    leaks = {(r["file"], r["other"]) for r in rows if r["issue"] == "leak"}
    for copy, original in planted["copies"].items():
        assert (copy, original) in leaks and (original, copy) in leaks
    exact, original = next(iter(planted["exact"].items()))
    assert (exact, f"exact copy of {original}") in leaks
    assert len(leaks) <= 2 * (len(planted["copies"]) + 1) + 2  # no more than one spurious pair
    with open(audited / "scores.csv", newline="") as f:  # the noise images lie farthest from every other image
        far = [r["file"] for r in sorted(csv.DictReader(f), key=lambda r: -float(r["stray_score"]))]
    assert set(planted["noise"]) <= set(far[:3]), far[:5]
    stray = [r["file"] for r in rows if r["issue"] == "stray"]
    assert set(stray) <= set(far[: len(stray)])  # the flagged strays are the farthest ones


def test_audit_summary_and_rerun_reuses_the_cache(planted, audited, tmp_path):
    import json

    summary = json.loads((audited / "audit.json").read_text())
    assert summary["images"] == 3 * (TRAIN + TEST) + 3 + 1 + 2
    assert summary["leaks"] >= 4 and summary["label_issues"] >= 2
    calibration = summary["calibration"]
    assert 0 < calibration["threshold"] <= calibration["impostor_distance_at_quantile"]
    assert calibration["copy_distance_at_quantile"] <= calibration["threshold"]
    assert calibration["expected_recall"] >= 0.99
    assert summary["embedding"]["computed"] == 2  # the images, also mirrored
    cache = audited.parent / "cache"
    args = ["audit", str(planted["root"]), "--output", str(tmp_path), *BACKBONE, "--no-progress"]
    assert main([*args, "--cache-dir", str(cache), "--prepare-dir", str(audited.parent / "prep")]) == 0
    again = json.loads((tmp_path / "audit.json").read_text())
    assert again["embedding"]["read"] == 2 and again["embedding"]["computed"] == 0
    assert read_rows(tmp_path) == read_rows(audited)


def test_label_ranking_and_strays_on_arrays():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 4
    y = np.repeat(np.arange(3), 60)
    x = centres[y] + rng.normal(size=(180, 16))
    noisy = y.copy()
    flipped = rng.choice(180, 12, replace=False)
    noisy[flipped] = (noisy[flipped] + 1) % 3
    probs = labels.out_of_fold_probabilities(x, noisy, 3, folds=5, progress=False)
    flagged, quality = labels.label_issues(noisy, probs)
    from sklearn.metrics import roc_auc_score

    truth = np.isin(np.arange(180), flipped)
    assert roc_auc_score(truth, -quality) > 0.97
    assert flagged[flipped].mean() >= 0.6 and flagged[~truth].mean() <= 0.05  # confident learning errs on caution
    far = np.vstack([x, rng.normal(size=(2, 16)) * 40])
    d, _ = nearest_neighbours(far, 10, progress=False)
    scores = strays.stray_scores(d)
    assert set(np.argsort(-scores)[:2]) == {180, 181} and strays.stray_flags(scores)[180:].all()


def test_nearest_neighbours_never_return_the_row_itself():
    emb = np.vstack([np.ones((5, 4)), np.eye(4)]).astype(np.float32)  # five exact copies
    d, idx = nearest_neighbours(emb, 3, progress=False)
    assert (idx != np.arange(9)[:, None]).all()
    assert np.allclose(d[:5], 0)


def test_near_pairs_put_leaks_first():
    pairs = np.array([[0, 1], [2, 3], [0, 2]])
    splits = np.array(["train", "test", "train", "train"])
    found = duplicates.near_pairs(pairs, np.array([0.1, 0.05, 0.9]), 0.2, splits, np.array([0, 1, 2, 2]))
    assert [(p["a"], p["b"], p["leak"], p["exact"]) for p in found] == [(0, 1, True, False), (2, 3, False, True)]


def test_aligned_distances_see_through_edits(cifar_train):
    images = cifar_train.images[:40].numpy()
    edited = []
    for k, image in enumerate(images):
        pil = Image.fromarray(image.transpose(1, 2, 0))
        edited.append(np.asarray(altered(pil, k % 3)).transpose(2, 0, 1))
    thumbs, copies_ = copies.thumbnails(images), copies.thumbnails(np.stack(edited))
    own = copies.aligned_distances(copies_, thumbs)
    others = copies.aligned_distances(copies_, thumbs.roll(1, 0))
    assert own.max() < 0.2 < 0.4 < np.sort(others)[1], (own.max(), np.sort(others)[:3])
    assert copies.aligned_distances(thumbs, thumbs).max() < copies.EXACT


def test_aligned_distances_match_cutting_out_every_window():
    rng = np.random.default_rng(0)
    first, second = (torch.from_numpy(rng.uniform(0, 255, (6, 32, 32))).half() for _ in range(2))
    s, m, inner = copies.SHIFT, copies.MARGIN, copies.SIDE - 2 * copies.MARGIN
    centre = copies.standardised(first[:, m:-m, m:-m].flatten(1))
    windows = [
        view[:, m + dy : m + dy + inner, m + dx : m + dx + inner].flatten(1)
        for view in (second, second.flip(-1))
        for dy in range(-s, s + 1)
        for dx in range(-s, s + 1)
    ]
    best = torch.einsum("npd,nd->np", copies.standardised(torch.stack(windows, 1)), centre).amax(1)
    expected = torch.sqrt(2 - 2 * best).numpy()
    assert np.allclose(copies.aligned_distances(first, second), expected, atol=1e-4)


def test_candidate_pairs_pair_an_image_with_its_mirror_image(cifar_train):
    images = cifar_train.images[:30].numpy()
    images = np.concatenate([images, images[3:4, :, :, ::-1]])  # image 30 is image 3 mirrored
    pairs = copies.candidate_pairs(copies.sketches(copies.thumbnails(images)), 2, progress=False)
    assert [3, 30] in pairs.tolist() and (pairs[:, 0] < pairs[:, 1]).all()


def test_the_page_ticks_rows_into_a_csv(audited, browser, tmp_path):
    page = browser.new_page()
    page.goto((audited / "audit.html").as_uri())
    assert page.locator("h2#label").count() == 1 and page.locator("h2#leak").count() == 1
    first = page.locator('tr[data-issue="label"]').first
    first.locator("input").check()
    assert page.locator("#ticked").inner_text() == "1 ticked"
    with page.expect_download() as info:
        page.get_by_text("download ticked rows as CSV").click()
    text = Path(info.value.path()).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    expected = next(r for r in read_rows(audited) if r["issue"] == "label")
    assert rows == [expected]
    page.locator("input[type=search]").fill("copy_")
    assert page.locator("tr[data-row]:not([hidden])").count() >= 3
    page.close()


def test_audit_argument_errors(planted, tmp_path, capsys):
    assert main(["audit", str(planted["root"]), "--folds", "1", "--output", str(tmp_path)]) == 2
    assert "--folds must be 2 or more" in capsys.readouterr().err
    assert main(["audit", str(tmp_path / "missing"), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgclf: error:") and len(err.strip().splitlines()) == 1


def folder_options(tmp_path: Path) -> list[str]:
    """Flags of a seconds-long run on a folder: simple_cnn, one epoch, no evaluation."""
    return [
        "--model", "simple_cnn", "--epochs", "1", "--batch-size", "32", "--output", str(tmp_path), "--no-progress",
        "--no-tensorboard", "--prepare-dir", str(tmp_path / "prep"), "--precision", "fp32",
    ]  # fmt: skip


def test_exclude_and_relabel_change_the_run_and_are_recorded(planted, audited, tmp_path):
    import json

    label = [r for r in read_rows(audited) if r["issue"] == "label"]
    exclude = tmp_path / "exclude.csv"
    exclude.write_text((audited / "audit.csv").read_text())  # the audit's own CSV: every suspect left out
    args = ["train", "--data", str(planted["root"]), "--exclude", str(exclude), "--name", "excluded"]
    assert main([*args, *folder_options(tmp_path), "--no-evaluate"]) == 0
    run = tmp_path / "excluded"
    lists = json.loads((run / "split.json").read_text())
    listed = {f for names in lists.values() for f in names}
    suspects = {r["file"] for r in read_rows(audited)}
    assert not listed & suspects and len(listed) == 3 * (TRAIN + TEST) + 6 - len(suspects)
    data = json.loads((run / "data.json").read_text())
    assert data["excluded"] == len(suspects) and data["edits"] == {"exclude": str(exclude)}
    skipped = json.loads((run / "skipped.json").read_text())
    assert {s["file"] for s in skipped if s["reason"].startswith("excluded")} == suspects
    assert any(s["reason"] == "excluded (label)" for s in skipped)

    relabel = tmp_path / "relabel.csv"  # the page's download: ticked label rows, relabelled to the suggestion
    relabel.write_text("\ufefffile,split,issue,score,given,suggested,other\r\n" + "".join(
        f'"{r["file"]}",{r["split"]},label,{r["score"]},{r["given"]},{r["suggested"]},\r\n' for r in label
    ))  # fmt: skip
    args = ["train", "--data", str(planted["root"]), "--relabel", str(relabel), "--name", "relabelled"]
    assert main([*args, *folder_options(tmp_path)]) == 0
    data = json.loads((tmp_path / "relabelled" / "data.json").read_text())
    assert {(c["file"], c["from"], c["to"]) for c in data["relabelled"]} == {
        (r["file"], r["given"], r["suggested"]) for r in label
    }
    leaks = [r for r in read_rows(audited) if r["issue"] == "leak" and r["split"] == "test"]
    leaked = tmp_path / "leaked.csv"
    leaked.write_text("file\n" + "".join(f"{r['file']}\n" for r in leaks))
    assert main(["evaluate", str(tmp_path / "relabelled"), "--exclude", str(leaked)]) == 0
    metrics = json.loads((tmp_path / "relabelled" / "metrics.json").read_text())
    assert metrics["test_images"] == 3 * TEST + 4 - len({r["file"] for r in leaks})


def test_audit_run_trains_the_recipe_once_per_fold_and_resumes(planted, audited, tmp_path, capsys):
    import json

    recipe = tmp_path / "recipe"
    args = ["train", "--data", str(planted["root"]), "--name", "recipe", *folder_options(tmp_path), "--no-evaluate"]
    assert main(args) == 0
    cache = ["--cache-dir", str(audited.parent / "cache"), "--prepare-dir", str(audited.parent / "prep")]
    args = ["audit", str(planted["root"]), "--output", str(tmp_path / "report"), *BACKBONE, *cache, "--no-progress"]
    assert main([*args, "--folds", "2", "--run", str(recipe)]) == 0
    summary = json.loads((tmp_path / "report" / "audit.json").read_text())
    assert summary["label_model"].startswith(f"simple_cnn trained per fold with the config of {recipe} (1 epochs)")
    folds = [tmp_path / "report" / "folds" / f"fold{k}" for k in (1, 2)]
    held = []
    for fold in folds:  # each fold's network never saw the images it predicts
        lists = json.loads((fold / "split.json").read_text())
        assert not set(lists["test"]) & (set(lists["train"]) | set(lists["val"]))
        assert json.loads((fold / "summary.json").read_text())["num_train"] == len(lists["train"])
        held += lists["test"]
    with open(audited / "scores.csv", newline="") as f:
        assert sorted(held) == sorted(r["file"] for r in csv.DictReader(f))
    with open(tmp_path / "report" / "scores.csv", newline="") as f:
        quality = [float(r["label_quality"]) for r in csv.DictReader(f)]
    with open(audited / "scores.csv", newline="") as f:
        linear = [float(r["label_quality"]) for r in csv.DictReader(f)]
    assert len(quality) == len(linear) and all(0 <= q <= 1 for q in quality) and quality != linear
    trained = [(fold / "summary.json").stat().st_mtime_ns for fold in folds]
    assert capsys.readouterr().out.count(": training simple_cnn on") == 2
    assert main([*args, "--folds", "2", "--run", str(recipe)]) == 0  # again: the finished folds are read back
    assert [(fold / "summary.json").stat().st_mtime_ns for fold in folds] == trained
    assert capsys.readouterr().out.count("trained earlier, read back") == 2
    assert main([*args, "--folds", "3", "--run", str(recipe)]) == 2  # other folds: never the models of these
    assert "holds a fold of another audit" in capsys.readouterr().err
    assert main([*args, "--run", str(tmp_path / "prep")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_cifar_runs_take_exclude_files_by_index(tiny_options, tmp_path):
    import json

    exclude = tmp_path / "x.csv"
    exclude.write_text("file,issue\ntrain/00000,label\ntrain/00001,leak\ntest/00003,leak\nnot/a/file,label\n")
    assert main(["train", "--model", "simple_cnn", "--epochs", "1", "--exclude", str(exclude), *tiny_options]) == 0
    data = json.loads(next(tmp_path.glob("*/data.json")).read_text())
    assert data["excluded"] == 2 and data["test_edits"] == {"exclude": 1, "relabel": 0}


@pytest.mark.parametrize(
    ("option", "text", "message"),
    [
        ("--exclude", "name,reason\na.png,x\n", "has no file column"),
        ("--exclude", 'file\n"a.png\n', "line"),
        ("--relabel", "file,label\ntrain/00000,\n", "needs a file and a new label"),
        ("--relabel", "file,label\ntrain/00000,zebra\n", "'zebra' of train/00000 is not a class"),
        ("--relabel", "file,new_label\ntrain/00000,cat\ntrain/00000,dog\n", "two new labels"),
        ("--relabel", "file\ntrain/00000\n", "no new-label column"),
        ("--exclude", b"\xff\xfe\x00file\n", "not UTF-8"),
    ],
)
def test_hostile_edit_files_are_one_line_errors(tiny_options, tmp_path, capsys, option, text, message):
    path = tmp_path / "edits.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["train", "--model", "simple_cnn", "--epochs", "1", option, str(path), *tiny_options]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("imgclf: error:"), err


def test_a_missing_edit_file_is_refused_before_any_data_is_read(tmp_path, capsys):
    assert main(["train", "--data", "cifar10", "--exclude", str(tmp_path / "nope.csv"), "--output", str(tmp_path)]) == 2
    assert "--exclude file not found" in capsys.readouterr().err


def test_the_study_report_names_the_last_audit(planted, audited, evaluated_runs, tmp_path):
    import json

    from imgclf.artifacts.audits import audit_line, find_audit
    from imgclf.report.compare import compare

    entry = find_audit(str(planted["root"]))  # the last audit of the folder (this module's first or its rerun)
    assert entry is not None and json.loads((Path(entry["output"]) / "audit.json").read_text())["images"] == 162
    assert find_audit(str(tmp_path)) is None
    line = audit_line(entry)
    assert f"{entry['label_issues']:,} suspected label errors" in line and "cross-split near-copies" in line
    compare(list(evaluated_runs.values()), tmp_path / "comparison", notes=[line])
    assert line in (tmp_path / "comparison" / "report.html").read_text()


def test_a_multilabel_audit_flags_labels_taken_away_or_added(data_dir, tmp_path):
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    script = [sys.executable, str(repo / "benchmarks" / "multilabel.py"), "make", str(tmp_path / "m")]
    subprocess.run([*script, "--data-dir", str(data_dir), "--train", "400", "--test", "40"], check=True)
    path = tmp_path / "m" / "labels.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    classes = sorted({c for r in rows for c in r["labels"]})
    planted = set()
    for k, row in enumerate(rows[:400:20]):  # every 20th training mosaic loses a label or gains a wrong one
        wrong = next(c for c in classes if c not in row["labels"])
        row["labels"] = row["labels"][1:] if k % 2 and len(row["labels"]) > 1 else [*row["labels"], wrong]
        planted.add(row["file"])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report"
    args = ["audit", str(path), "--output", str(out), *BACKBONE, "--no-progress", "--cache-dir", str(tmp_path / "c")]
    assert main([*args, "--prepare-dir", str(tmp_path / "p")]) == 0
    flagged = {r["file"] for r in read_rows(out) if r["issue"] == "label"}
    assert len(flagged & planted) >= len(planted) // 2, (len(flagged & planted), len(flagged))
    with open(out / "scores.csv", newline="") as f:  # every image's scores: the planted ones rank low in quality
        every = {r["file"]: float(r["label_quality"]) for r in csv.DictReader(f)}
    clean = [q for name, q in every.items() if name not in planted]
    assert np.median([every[name] for name in planted]) < np.median(clean)


def test_folds_follow_the_smallest_class():
    from imgclf.core.errors import ImgclfError

    assert labels.usable_folds(np.array([0, 0, 0, 1, 1, 1, 1, 1, 1]), ["a", "b"], 5) == 3
    assert labels.usable_folds(np.array([[1, 0], [1, 1], [0, 1], [1, 0]]), ["a", "b"], 5) == 2
    with pytest.raises(ImgclfError, match="class 'b' has 1 image"):
        labels.usable_folds(np.array([0, 0, 1]), ["a", "b"], 5)
