"""Self-contained HTML reports: figures embedded as data URIs, no external resources, opens offline."""

import base64
import html
import os
from pathlib import Path

import yaml

from imgclf.artifacts.files import CONFIG, REPORT
from imgclf.core.io import atomic_write
from imgclf.data.policies import ABSTAIN_SCORES, IMBALANCED, below_threshold
from imgclf.report.reference import dataset_name

SORT_ABOVE = 20  # classes: above this, the per-class table lists the worst classes first

STYLE = """
body { font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; }
main { max-width: 1220px; margin: 0 auto; padding: 2rem 1.5rem 4rem; background: #fff; }
h1 { font-size: 1.9rem; margin: 0 0 .3rem; } h2 { font-size: 1.3rem; margin-top: 2.2rem;
     border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
.subtitle { color: #59636e; margin-bottom: 1.5rem; }
.cards { display: flex; flex-wrap: wrap; gap: .8rem; }
.card { border: 1px solid #d0d7de; border-radius: 8px; padding: .7rem 1rem; min-width: 9rem; }
.card .value { font-size: 1.45rem; font-weight: 600; } .card .label { color: #59636e; font-size: .85rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; margin: .5rem 0; }
th, td { border: 1px solid #d0d7de; padding: .35rem .6rem; text-align: right; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
.table { overflow-x: auto; }  /* a table never widens the page: at worst it scrolls inside it */
.results { font-size: .8rem; } .results th { font-weight: 600; vertical-align: bottom; }
.results td, .results th { padding: .3rem .4rem; }
.results td:nth-child(2), .results th:nth-child(2), .results td:last-child { text-align: left; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: #59636e; font-size: .9rem; }
pre { background: #f6f8fa; padding: .8rem; border-radius: 6px; overflow-x: auto; font-size: .82rem; }
details summary { cursor: pointer; font-weight: 600; margin: .5rem 0; }
"""


def image_tag(path: Path, alt: str) -> str:
    """An <img> with the PNG at ``path`` embedded as a base64 data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def figure(path: Path, caption: str) -> str:
    """A captioned, embedded figure."""
    return f"<figure>{image_tag(path, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def cards(items: list[tuple[str, str]]) -> str:
    """Headline numbers as a row of cards."""
    body = "".join(
        f'<div class="card"><div class="value">{html.escape(v)}</div><div class="label">{html.escape(k)}</div></div>'
        for k, v in items
    )
    return f'<div class="cards">{body}</div>'


def table(headers: list[str], rows: list[list[str]], css_class: str = "") -> str:
    """An HTML table of already formatted cells."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    rows_html = f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
    return f'<div class="table"><table class="{css_class}">{rows_html}</table></div>'


def hide_paths(value: object) -> object:
    """``value`` with every absolute path (in nested dicts and lists too) cut to ``…/<its last part>``."""
    if isinstance(value, dict):
        return {k: hide_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [hide_paths(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return f"…/{Path(value).name}"
    return value


def config_block(title: str, config: dict) -> str:
    """A run's configuration as collapsible YAML, absolute paths of this machine cut to their last part."""
    text = html.escape(yaml.safe_dump(hide_paths(config), sort_keys=False, allow_unicode=True))
    return f"<details><summary>{html.escape(title)}</summary><pre>{text}</pre></details>"


def write_page(path: Path, title: str, subtitle: str, body: list[str]) -> Path:
    """Write a complete HTML document (atomically)."""
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><main><h1>{html.escape(title)}</h1>"
        f'<div class="subtitle">{html.escape(subtitle)}</div>{"".join(body)}</main></body></html>'
    )
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path


def size(scores: dict) -> str:
    """A class's training images, as a table cell (empty for runs evaluated before they were recorded)."""
    return f"{scores['train_images']:,}" if "train_images" in scores else ""


def fitted_on(metrics: dict) -> str:
    """What the temperature was fitted on, in words: the validation split, its size and imbalance."""
    fitted = metrics.get("temperature_fitted_on")
    if not fitted:
        return "fitted on the validation split"
    ratio = f", imbalance {fitted['imbalance_ratio']:.0f}:1" if fitted.get("imbalance_ratio", 1) >= IMBALANCED else ""
    return f"fitted on the validation split: {fitted['images']:,} images{ratio}; measured on the test split"


def calibration_rows(metrics: dict) -> list[list[str]]:
    """The calibration table's rows: before and after the temperature."""
    cal, scaled = metrics["calibration"], metrics["calibration_temperature_scaled"]
    return [
        [label, f"{c['ece']:.4f}", f"{c['mce']:.4f}", f"{c['nll']:.4f}", f"{c['brier']:.4f}"]
        for label, c in (("before", cal), (f"temperature {metrics['temperature']:.3f}", scaled))
    ]


def selective_section(metrics: dict) -> list[str]:
    """The report's abstain section: the rule, fitted on validation, and what it does on the test split."""
    sel = metrics.get("selective")
    if not sel:
        return []
    test, val = sel["test"], sel.get("validation")
    target = sel["target_risk"]
    rule = (
        f"the lowest threshold whose answers err at most {target:.1%} of the time on the validation split"
        if target is not None
        else "a fixed threshold"
    )
    state = (
        f"predict and serve answer <code>unknown</code> when {below_threshold(sel)} ({rule})"
        if sel["abstaining"]
        else f"not abstaining (<code>--abstain off</code>); with <code>--abstain auto</code>, {rule} would answer "
        f"<code>unknown</code> when {below_threshold(sel)}"
    )
    rows = [["validation", f"{val['coverage']:.1%}", f"{val['risk']:.2%}", f"{val['images']:,}"]] if val else []
    rows.append(["test", f"{test['coverage']:.1%}", f"{test['risk']:.2%}", f"{metrics['test_images']:,}"])
    return [
        "<h2>Abstaining: answer only when sure</h2>",
        f"<p>Score: {ABSTAIN_SCORES[sel['score']]}. {state}. Test risk at full coverage "
        f"{test['full_coverage_risk']:.2%}; AURC {test['aurc']:.4f} (area under the risk–coverage curve, lower is "
        "better).</p>",
        table(["split", "coverage (answered)", "risk (errors among answered)", "images"], rows),
    ]


LONG_METRICS = ("confusion_matrix", "reliability", "per_class", "classes")  # shown above, not in metrics.json's block


def closing(run_dir: Path, metrics: dict, config: dict, captions: dict[str, str]) -> list[str]:
    """The end of a run's report: its figures, configuration and metrics."""
    shown = {k: v for k, v in metrics.items() if k not in LONG_METRICS}
    if "selective" in shown:  # its curve is the figure
        shown["selective"] = {k: v for k, v in shown["selective"].items() if k != "curve"}
    return [
        "<h2>Figures</h2>",
        *[figure(run_dir / f, captions.get(Path(f).stem, Path(f).stem)) for f in metrics["figures"]],
        "<h2>Configuration</h2>",
        config_block(CONFIG, config),
        config_block("metrics.json (without the confusion matrix and curves)", shown),
    ]


def multilabel_report(run_dir: Path, metrics: dict, config: dict) -> Path:
    """``report.html`` of one evaluated multi-label run: mAP and F1 first, per-class AP worst first."""
    cal, scaled = metrics["calibration"], metrics["calibration_temperature_scaled"]
    card = metrics["cardinality"]
    headline = [
        ("test mAP", f"{metrics['map']:.2%}"),
        ("macro F1", f"{metrics['macro_f1']:.4f}"),
        ("micro F1", f"{metrics['micro_f1']:.4f}"),
        ("exact match", f"{metrics['exact_match']:.2%}"),
        ("Hamming loss", f"{metrics['hamming_loss']:.4f}"),
        ("labels per image", f"{card['predicted']:.2f} predicted / {card['true']:.2f} true"),
        ("train mAP", f"{metrics['train_map']:.2%}"),
        ("ECE → scaled", f"{cal['ece']:.2%} → {scaled['ece']:.2%}"),
        ("parameters", f"{metrics['parameters']:,}"),
        ("inference", f"{metrics['inference_images_per_second']:,.0f} img/s"),
    ]
    scores = sorted(metrics["per_class"].items(), key=lambda item: (item[1]["ap"] is not None, item[1]["ap"] or 0))
    rows = [
        [name, "" if v["ap"] is None else f"{v['ap']:.3f}", f"{v['threshold']:.3f}"]
        + [f"{v[k]:.3f}" for k in ("precision", "recall", "f1")]
        + [v["support"], size(v)]
        for name, v in scores
    ]
    captions = {
        "pr_curves": "Precision–recall curves on the test split (the worst classes by average precision)",
        "reliability": "Reliability over every class-probability, before and after temperature scaling "
        f"({fitted_on(metrics)})",
        "training_curves": "Training curves (accuracy: exact match at probability ½)",
        "misclassified": "The most confident wrong decisions on test images (true labels → predicted labels)",
    }
    body = [
        cards(headline),
        "<h2>Per-class average precision, worst first</h2>",
        "<p>Each class is predicted when its calibrated probability reaches its threshold, fitted on the validation "
        "split for the best F1; precision, recall and F1 are at that threshold, on the test split.</p>",
        table(["class", "AP", "threshold", "precision", "recall", "F1", "test images", "train images"], rows),
        "<h2>Calibration</h2>",
        f"<p>Over every class-probability; temperature {fitted_on(metrics)}.</p>",
        table(["", "ECE (15 bins)", "MCE", "NLL per class", "Brier"], calibration_rows(metrics)),
        *closing(run_dir, metrics, config, captions),
    ]
    dataset = dataset_name(metrics)
    subtitle = (
        f"{run_dir.name} · {dataset}, {len(scores)} classes, multi-label · {metrics['device']} · {metrics['precision']}"
    )
    return write_page(run_dir / REPORT, f"{metrics['model']} on {dataset}", subtitle, body)


def evaluation_report(run_dir: Path, metrics: dict, config: dict) -> Path:
    """``report.html`` of one evaluated run."""
    if metrics.get("task") == "multilabel":
        return multilabel_report(run_dir, metrics, config)
    cal, scaled = metrics["calibration"], metrics["calibration_temperature_scaled"]
    headline = [
        ("test accuracy", f"{metrics['test_accuracy']:.2%}"),
        ("test loss", f"{metrics['test_loss']:.4f}"),
        ("train accuracy", f"{metrics['train_accuracy']:.2%}"),
        ("overfitting gap", f"{metrics['overfitting_gap']:+.2%}"),
        ("macro F1", f"{metrics['macro']['f1']:.4f}"),
        ("ECE → scaled", f"{cal['ece']:.2%} → {scaled['ece']:.2%}"),
        ("parameters", f"{metrics['parameters']:,}"),
        ("inference", f"{metrics['inference_images_per_second']:,.0f} img/s"),
    ]
    if "tta" in metrics:
        views = metrics["tta"].get("views", "flip")
        headline.insert(1, (f"test accuracy, TTA ({views})", f"{metrics['tta']['test_accuracy']:.2%}"))
    imbalanced = metrics.get("imbalance_ratio", 1.0) >= IMBALANCED
    if imbalanced:
        headline.insert(1, ("balanced accuracy", f"{metrics['balanced_accuracy']:.2%}"))
    class_scores = list(metrics["per_class"].items())
    heading = "Per-class precision, recall and F1"
    if imbalanced:  # the long tail at the bottom, beside its class sizes
        class_scores.sort(key=lambda item: -item[1].get("train_images", 0))
        heading += f" by training images, largest class first (imbalance {metrics['imbalance_ratio']:.0f}:1)"
    elif len(class_scores) > SORT_ABOVE:
        class_scores.sort(key=lambda item: item[1]["accuracy"])
        heading += f" ({len(class_scores)} classes, worst accuracy first)"
    per_class = [
        [name, *(f"{v[k]:.3f}" for k in ("precision", "recall", "f1")), f"{v['accuracy']:.2%}", v["support"], size(v)]
        for name, v in class_scores
    ]
    for average in ("macro", "weighted"):
        m = metrics[average]
        per_class.append([f"{average} avg", *(f"{m[k]:.3f}" for k in ("precision", "recall", "f1")), "", "", ""])
    calibration = calibration_rows(metrics)
    confused = [[p["true"], p["predicted"], p["count"]] for p in metrics["most_confused"]]
    captions = {
        "confusion_matrix": "Confusion matrix (test split)",
        "reliability": f"Reliability diagram, before and after temperature scaling ({fitted_on(metrics)})",
        "training_curves": "Training curves",
        "misclassified": "The most confidently misclassified test images (true → predicted, confidence)",
        "misclassified_gradcam": "The same mistakes with their Grad-CAM heatmaps: where the network found the class it "
        "predicted (red: most)",
        "risk_coverage": "Risk–coverage: the error rate among the answered test images as fewer are answered",
    }
    body = [
        cards(headline),
        f"<h2>{html.escape(heading)}</h2>",
        table(["class", "precision", "recall", "F1", "accuracy", "test images", "train images"], per_class),
        "<h2>Calibration</h2>",
        f"<p>Temperature {fitted_on(metrics)}.</p>",
        table(["", "ECE (15 bins)", "MCE", "NLL", "Brier"], calibration),
        *selective_section(metrics),
        "<h2>Most confused pairs</h2>",
        table(["true", "predicted", "count"], confused),
        *closing(run_dir, metrics, config, captions),
    ]
    dataset = dataset_name(metrics)
    subtitle = f"{run_dir.name} · {dataset}, {len(class_scores)} classes · {metrics['device']} · {metrics['precision']}"
    return write_page(run_dir / REPORT, f"{metrics['model']} on {dataset}", subtitle, body)


def comparison_report(
    output: Path,
    runs: list[dict],
    headers: list[str],
    rows: list[list[str]],
    figure_paths: list[Path],
    notes: list[str] | tuple = (),
) -> Path:
    """``report.html`` comparing several runs: ``notes`` (lines about the data), results table (formatted ``rows``),
    figures, configs."""
    captions = {
        "curves": "Validation accuracy and loss per epoch",
        "accuracy_vs_parameters": "Test accuracy vs parameters",
        "accuracy_vs_time": "Test accuracy vs training time",
        "per_class_accuracy": "Per-class test accuracy",
        "reliability": "Reliability diagrams (test split)",
    }
    best = max(runs, key=lambda r: r["test_accuracy"])
    body = [
        cards([("runs", str(len(runs))), ("best", f"{best['run']}: {best['test_accuracy']:.2%}")]),
        *(f'<p class="note">{html.escape(n)}</p>' for n in notes),
        "<h2>Results</h2>",
        table(headers, rows, css_class="results"),
        "<h2>Figures</h2>",
        *[figure(p, captions.get(p.stem, p.stem)) for p in figure_paths],
        "<h2>Run configurations</h2>",
        *[config_block(r["run"], r["config"]) for r in runs],
    ]
    datasets = " / ".join(dict.fromkeys(r["dataset"] for r in runs))
    return write_page(output / REPORT, f"Model comparison on {datasets}", f"{len(runs)} runs", body)
