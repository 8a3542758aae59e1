"""Compare evaluated runs: one results table (Markdown, CSV, HTML), the impact of each step, comparison figures."""

import csv
import html
import json
from pathlib import Path

import yaml

from imgclf.errors import ImgclfError
from imgclf.report import figures
from imgclf.report.html import comparison_report
from imgclf.training.checkpoint import atomic_write
from imgclf.training.history import read_history

# (key, header, format) of the results table: the reference study's columns, then speed and calibration
COLUMNS = [
    ("run", "run", "{}"),
    ("model", "model", "{}"),
    ("test_accuracy", "test accuracy", "{:.2%}"),
    ("test_loss", "test loss", "{:.4f}"),
    ("overfitting_gap", "overfitting gap (train − test)", "{:+.2%}"),
    ("parameters", "parameters", "{:,}"),
    ("trainable_parameters", "trainable parameters", "{:,}"),
    ("train_seconds", "training time (s)", "{:,.0f}"),
    ("images_per_second", "inference img/s", "{:,.0f}"),
    ("ece", "ECE", "{:.2%}"),
    ("impact", "Δ accuracy vs previous", "{}"),
]


def load_run(run_dir: Path) -> dict:
    """The facts of one evaluated run that the comparison needs."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "summary.json", "metrics.json"):
        if not (run_dir / name).is_file():
            hint = f"; run `imgclf evaluate {run_dir}` first" if name == "metrics.json" else ""
            raise ImgclfError(f"{run_dir} has no {name}{hint}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "run": run_dir.name,
        "path": str(run_dir),
        "model": metrics["model"],
        "test_accuracy": metrics["test_accuracy"],
        "test_loss": metrics["test_loss"],
        "overfitting_gap": metrics["overfitting_gap"],
        "parameters": metrics["parameters"],
        "trainable_parameters": metrics["trainable_parameters"],
        "train_seconds": summary["train_seconds"],
        "images_per_second": metrics["inference_images_per_second"],
        "ece": metrics["calibration"]["ece"],
        "per_class_accuracy": {name: v["accuracy"] for name, v in metrics["per_class"].items()},
        "reliability": metrics.get("reliability"),
        "history": read_history(run_dir / "history.jsonl"),
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
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


def cell(run: dict, key: str, fmt: str) -> str:
    value = run.get(key)
    return "—" if value is None else fmt.format(value)


def markdown_table(runs: list[dict]) -> str:
    """The results table as GitHub Markdown."""
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r, k, f) for k, _, f in COLUMNS) + " |" for r in runs]
    return "\n".join(lines) + "\n"


def html_table(runs: list[dict]) -> str:
    """The results table as an HTML <table>."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in COLUMNS)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(r, k, f))}</td>" for k, _, f in COLUMNS) + "</tr>" for r in runs
    )
    return f'<table class="results"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def write_csv(runs: list[dict], path: Path) -> None:
    """The results table as CSV with raw (unformatted) values."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([k for k, _, _ in COLUMNS])
            for r in runs:
                writer.writerow([r.get(k) for k, _, _ in COLUMNS])

    atomic_write(path, write)


def compare(run_dirs: list[str | Path], output: str | Path, order: list[str] | None = None) -> list[dict]:
    """Write results.{md,csv,html}, comparison figures and report.html for ``run_dirs`` into ``output``."""
    if not run_dirs:
        raise ImgclfError("compare needs at least one run directory")
    output = Path(output)
    runs = order_runs([load_run(Path(d)) for d in run_dirs], order)
    add_impact(runs)
    output.mkdir(parents=True, exist_ok=True)
    table = markdown_table(runs)
    atomic_write(output / "results.md", lambda tmp: tmp.write_text(table))
    write_csv(runs, output / "results.csv")
    atomic_write(output / "results.html", lambda tmp: tmp.write_text(html_table(runs)))
    paths = figures.comparison_figures(runs, output / "figures")
    comparison_report(output, runs, COLUMNS, paths)
    return runs
