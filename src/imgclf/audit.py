"""`imgclf audit DATA`: read every image, audit it (``analysis/``), write audit.csv, audit.json and audit.html."""

from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.artifacts.audits import record_audit
from imgclf.core.errors import ImgclfError
from imgclf.core.io import atomic_write, write_json
from imgclf.data.labelfile import DEFAULT_FORMAT, LabelFormat

if TYPE_CHECKING:
    from imgclf.data.inventory import Inventory

CSV_NAME, JSON_NAME, PAGE_NAME, SCORES_NAME = "audit.csv", "audit.json", "audit.html", "scores.csv"
# images are embedded at 224 px whatever their size: on 10,000 CIFAR-10 images (32 px) with 8% of labels flipped,
# Lite2's features flagged them with F1 0.878 (AUROC 0.993) at 224 px against 0.819 (0.985) at 112 px (3.5× the
# images, the no-flag training side); the whole audit took 3.8 min against 1.5 (benchmarks/results/audit_labels*.json)
EMBED_SIDE = 224


def default_backbone() -> str:
    """The best backbone whose ImageNet weights are installed, or a one-line error saying how to choose one."""
    from imgclf.models.backbones import best_installed_backbone

    name = best_installed_backbone()
    if name is None:
        raise ImgclfError("no pretrained backbone is installed: pass --backbone NAME (a timm model with weights)")
    return name


def preparation_side(data: str, fmt: LabelFormat, side: int) -> int:
    """The side a folder's images are prepared at: their typical side, at most the embedding ``side`` (the
    embedder enlarges small images itself, so 32-px images are not stored at 224 px)."""
    from imgclf.config.auto import BUILTIN_SIDE
    from imgclf.data.files import typical_side
    from imgclf.data.sources import is_builtin

    return BUILTIN_SIDE if is_builtin(data) else min(side, max(BUILTIN_SIDE, typical_side(data, fmt)))


def check_recipe(run: str) -> None:
    """A one-line error, before any image is read, for a ``--run`` that is no run or whose weights are missing."""
    from imgclf.artifacts.runs import RunDir
    from imgclf.models.backbones import check_weights_available

    cfg = RunDir(run).read_config()
    if cfg.is_transfer and cfg.pretrained and not cfg.weights:
        check_weights_available(cfg.model)


def run_probabilities(run: str, data: str, inv: "Inventory", folds: int, seed: int, output: Path, load: dict) -> dict:
    """``audit``'s probs and label_model from ``run``'s recipe trained once per fold on ``inv``'s images, at the
    side the run's images were stored at (prepared again when the audit's side differs)."""
    from imgclf.analysis.fold_runs import fold_probabilities
    from imgclf.analysis.labels import RANKING, usable_folds
    from imgclf.artifacts.runs import RunDir, data_side
    from imgclf.config.auto import BUILTIN_SIDE
    from imgclf.data.inventory import inventory

    source = RunDir(run)
    cfg, card = source.read_config(), source.read_card()
    side = card.data_size if card is not None else (data_side(cfg) or BUILTIN_SIDE)
    images = inv.images
    if images.images.shape[-1] != side:
        other = inventory(data, side=side, **load)
        if other.names != inv.names:
            raise ImgclfError(f"{data} changed while it was audited: audit it again")
        images = other.images
    folds = usable_folds(images.labels.numpy(), images.classes, folds)
    probs = fold_probabilities(cfg, images, inv.names, folds, seed, output, data, load["progress"])
    model = f"{cfg.model} trained per fold with the config of {run} ({cfg.epochs} epochs)"
    return {"probs": probs, "label_model": f"{model}; {RANKING}"}


def run_audit(
    data: str,
    output: str | Path,
    *,
    backbone: str = "",
    side: int = 0,
    folds: int = 5,
    seed: int = 0,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    prepare_dir: str | None = None,
    progress: bool = True,
    fmt: LabelFormat = DEFAULT_FORMAT,
    run: str | None = None,
) -> dict:
    """Audit ``data`` into the folder ``output``: audit.html, audit.csv (the suspects), scores.csv (every image's
    scores) and audit.json (the summary, also returned). ``run``: a run directory whose recipe is trained once
    per fold for the out-of-fold probabilities (its folds kept under ``output``), instead of a linear model."""
    from imgclf.analysis.audit import CSV_FIELDS, SCORE_FIELDS, audit, csv_text, scores_rows
    from imgclf.analysis.embed import Embedder
    from imgclf.data.inventory import inventory
    from imgclf.report.audit_page import audit_page

    if folds < 2:
        raise ImgclfError(f"--folds must be 2 or more, got {folds}")
    if run:
        check_recipe(run)
    side = side or EMBED_SIDE
    stored = preparation_side(data, fmt, side)
    load = dict(data_dir=data_dir, prepare_dir=prepare_dir, progress=progress, fmt=fmt)
    inv = inventory(data, side=stored, **load)
    embedder = Embedder(backbone or default_backbone(), side, cache_dir=cache_dir, progress=progress)
    output = Path(output)
    labelled = run_probabilities(run, data, inv, folds, seed, output, load) if run else {}
    result = audit(inv, embedder, folds=folds, seed=seed, **labelled)
    summary = {"dataset": inv.name, **inv.info, **result.summary, "confusable_classes": result.confusable}
    atomic_write(output / CSV_NAME, lambda tmp: tmp.write_text(csv_text(result.rows), encoding="utf-8"))
    scores = csv_text(scores_rows(inv, result.scores), SCORE_FIELDS)
    atomic_write(output / SCORES_NAME, lambda tmp: tmp.write_text(scores, encoding="utf-8"))
    write_json(output / JSON_NAME, summary)
    record_audit(data, output, summary)
    audit_page(output / PAGE_NAME, inv.name, result.rows, summary, inv.images.images, inv.names, CSV_FIELDS)
    return summary
