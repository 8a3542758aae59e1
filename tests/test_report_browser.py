"""The HTML reports as users open them: in real headless Chromium (Debian's package, driven by Playwright)."""

from imgclf.cli import main


def open_report(browser, path, screenshot):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    failed = []
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(path.as_uri(), wait_until="load")
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.src.slice(0, 22)])")
    external = page.eval_on_selector_all(
        "[src], [href]", "els => els.map(e => e.getAttribute('src') || e.getAttribute('href'))"
    )
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes()[:4] == b"\x89PNG" and screenshot.stat().st_size > 20_000
    assert not failed
    assert all(not url.startswith(("http:", "https:", "//")) for url in external), external
    assert images and all(complete and width > 0 for complete, width, _ in images), images
    assert all(src == "data:image/png;base64," for _, _, src in images)
    return page, images


def test_comparison_report_renders(browser, evaluated_runs, tmp_path):
    out = tmp_path / "cmp"
    runs = [str(evaluated_runs["simple_cnn"]), str(evaluated_runs["resnet20"])]
    assert main(["compare", *runs, "--output", str(out)]) == 0
    page, images = open_report(browser, out / "report.html", tmp_path / "comparison.png")
    assert len(images) == len(list((out / "figures").glob("*.png"))) == 5
    assert page.locator("table.results tbody tr").count() == 2
    assert page.locator("table.results tbody tr").first.locator("td").nth(1).inner_text() == "simple_cnn"
    assert page.title() == "Model comparison on CIFAR-10"


def test_evaluation_report_renders(browser, evaluated_runs, tmp_path):
    run_dir = evaluated_runs["simple_cnn"]
    page, images = open_report(browser, run_dir / "report.html", tmp_path / "evaluation.png")
    assert len(images) == 6  # confusion, reliability, curves, mistakes, risk–coverage, mistakes' heatmaps
    assert page.locator("h2", has_text="Abstaining: answer only when sure").count() == 1
    assert "simple_cnn on CIFAR-10" in page.locator("h1").inner_text()
    assert page.locator("table").first.locator("tbody tr").count() == 12  # 10 classes + macro + weighted


def test_reports_of_a_folder_run_name_its_classes(browser, tmp_path):
    """train → evaluate → compare on a folder of images; both pages in Chromium show the folder and its classes."""
    from folders import make_folder

    folder = make_folder(tmp_path / "fungi", ["amanita", "boletus", "chanterelle"], 12)
    common = ["--data", str(folder), "--output", str(tmp_path / "runs"), "--prepare-dir", str(tmp_path / "prep")]
    common += ["--epochs", "2", "--batch-size", "8", "--no-progress", "--no-tensorboard"]
    for model in ("simple_cnn", "resnet20"):
        assert main(["train", "--model", model, "--name", model, *common]) == 0
    runs = [str(tmp_path / "runs" / m) for m in ("simple_cnn", "resnet20")]
    assert main(["compare", *runs, "--output", str(tmp_path / "cmp")]) == 0
    page, _ = open_report(browser, tmp_path / "runs" / "resnet20" / "report.html", tmp_path / "evaluation.png")
    assert page.locator("h1").inner_text() == "resnet20 on fungi"
    first_column = page.locator("table").first.locator("tbody tr td:first-child").all_inner_texts()
    assert first_column[:3] == ["amanita", "boletus", "chanterelle"]
    page, _ = open_report(browser, tmp_path / "cmp" / "report.html", tmp_path / "comparison.png")
    assert page.title() == "Model comparison on fungi"
    assert str(tmp_path) not in page.content()


def test_a_wide_comparison_fits_a_1280_px_window(browser, tmp_path):
    """The study's five runs with the reference columns and long model names: every column of the results table is
    on screen at 1,280 px (nothing scrolls sideways, page or table), and the figures show no raw mathtext."""
    from test_report_unit import fake_metrics, make_run

    from imgclf.report.compare import compare

    runs = []
    names = ["simple_cnn", "vgg10", "resnet20", "transfer_96", "transfer_224"]
    models = ["simple_cnn", "vgg10", "resnet20", "tf_efficientnet_lite2", "tf_efficientnet_lite2"]
    for i, (name, model) in enumerate(zip(names, models, strict=True)):
        metrics = fake_metrics(model, accuracy=0.8 + i / 50, dataset="CIFAR-10")
        metrics.update(parameters=[315_914, 402_770, 269_722, 4_823_882, 4_823_882][i], trainable_parameters=4_469_402)
        runs.append(make_run(tmp_path, name, metrics))
    compare(runs, tmp_path / "cmp", names)
    page, _ = open_report(browser, tmp_path / "cmp" / "report.html", tmp_path / "wide.png")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    widths = page.eval_on_selector_all("div.table", "els => els.map(e => [e.scrollWidth, e.clientWidth])")
    assert widths and all(scroll <= client for scroll, client in widths), widths
    assert page.locator("table.results th").last.is_visible()
    headers = page.locator("table.results th").all_inner_texts()
    assert "ECE" in headers and "reference accuracy" in headers
