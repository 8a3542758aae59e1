"""Compare evaluated runs: one results table (Markdown, CSV, HTML), the impact of each step, comparison figures."""

from pathlib import Path

from imgclf.artifacts.runs import RunDir
from imgclf.core.errors import ImgclfError
from imgclf.core.io import atomic_write
from imgclf.report import figures
from imgclf.report.html import comparison_report, table
from imgclf.report.reference import add_reference, dataset_name
from imgclf.report.table import engine_text, headers, markdown_table, rows, write_csv


def load_run(run_dir: Path) -> dict:
    """The facts of one evaluated run that the comparison needs."""
    run = RunDir(run_dir)
    config = run.read_config().to_dict()
    summary, metrics = run.read_summary(), run.read_metrics()
    return {
        "run": run.path.resolve().name,
        "model": metrics["model"],
        "dataset": dataset_name(metrics),
        "test_accuracy": metrics["test_accuracy"],
        "map": metrics.get("map"),  # multi-label runs
        "macro_f1": metrics.get("macro_f1"),
        "test_loss": metrics["test_loss"],
        "overfitting_gap": metrics["overfitting_gap"],
        "parameters": metrics["parameters"],
        "trainable_parameters": metrics["trainable_parameters"],
        "train_seconds": summary["train_seconds"],
        "images_per_second": metrics["inference_images_per_second"],
        "ece": metrics["calibration"]["ece"],
        "per_class_accuracy": {name: v["accuracy"] for name, v in metrics["per_class"].items()},
        "reliability": metrics.get("reliability"),
        "engine": engine_text(summary.get("engine")),
        "history": run.read_history(),
        "config": config,
    }


def order_runs(runs: list[dict], order: list[str] | None) -> list[dict]:
    """Runs in the order named (by run directory name or model name), else as given."""
    if not order:
        return runs
    ordered = []
    for name in order:
        matches = [r for r in runs if name in (r["run"], r["model"])]
        if not matches:
            raise ImgclfError(
                f"--order names '{name}', which is none of the runs ({', '.join(r['run'] for r in runs)})"
            )
        ordered += [r for r in matches if r not in ordered]
    return ordered + [r for r in runs if r not in ordered]


def add_impact(runs: list[dict]) -> None:
    """Accuracy change of each run over the previous one in the order (the first has none)."""
    for previous, run in zip([None, *runs], runs, strict=False):
        if previous is None:
            run["impact"] = "—"
        else:
            delta = run["test_accuracy"] - previous["test_accuracy"]
            run["impact"] = f"{delta * 100:+.2f} pts vs {previous['run']}"


def compare(
    run_dirs: list[str | Path], output: str | Path, order: list[str] | None = None, notes: list[str] | tuple = ()
) -> list[dict]:
    """Write results.{md,csv,html}, comparison figures and report.html for ``run_dirs`` into ``output`` (``notes``:
    lines the report shows above the results, e.g. the dataset's audit)."""
    if not run_dirs:
        raise ImgclfError("compare needs at least one run directory")
    output = Path(output)
    runs = order_runs([load_run(Path(d)) for d in run_dirs], order)
    add_impact(runs)
    add_reference(runs)
    output.mkdir(parents=True, exist_ok=True)
    head, cells = headers(runs), rows(runs)
    atomic_write(output / "results.md", lambda tmp: tmp.write_text(markdown_table(runs)))
    write_csv(runs, output / "results.csv")
    atomic_write(output / "results.html", lambda tmp: tmp.write_text(table(head, cells, css_class="results")))
    paths = figures.comparison_figures(runs, output / "figures")
    comparison_report(output, runs, head, cells, paths, notes)
    return runs
