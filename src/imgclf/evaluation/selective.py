"""Selective prediction: answer only when sure enough, else say "unknown" (issue 30's abstain).

Small functions over arrays. Each assumes a confidence ``score`` per image (higher: surer) and whether its top-1
answer is ``correct``. Answering only the images scored at or above a threshold covers a fraction of them (coverage)
and errs on a fraction of those (risk); the risk–coverage curve and its area, AURC, measure a score (Geifman &
El-Yaniv 2017: lower is better). The threshold for a target risk is fitted on the validation split, never the test.
"""

import numpy as np

from imgclf.core.errors import ImgclfError


def pessimistic_order(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Indices from the highest score down, the wrong answers first among equal scores: a score earns nothing
    from ties."""
    return np.lexsort((np.asarray(correct, dtype=bool), -np.asarray(scores, dtype=np.float64)))


def risk_coverage(scores: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """The curve of answering every image scored at or above each distinct score: ``threshold``, ``coverage`` and
    ``risk`` (error rate among the answered), from the highest threshold down (coverage rising to 1)."""
    order = pessimistic_order(scores, correct)  # within a group of equal scores the order does not matter
    ranked, wrong = np.asarray(scores)[order], ~np.asarray(correct, dtype=bool)[order]
    answered = np.arange(1, len(ranked) + 1)
    errors = np.cumsum(wrong)
    ends = np.r_[ranked[1:] != ranked[:-1], True]  # the last image of each group of equal scores
    return {
        "threshold": ranked[ends],
        "coverage": answered[ends] / len(ranked),
        "risk": errors[ends] / answered[ends],
    }


def aurc(scores: np.ndarray, correct: np.ndarray) -> float:
    """The area under the risk–coverage curve: the mean, over k = 1…N, of the risk among the k highest-scored images
    (among equal scores, the wrong answers first)."""
    wrong = ~np.asarray(correct, dtype=bool)[pessimistic_order(scores, correct)]
    return float(np.mean(np.cumsum(wrong) / np.arange(1, len(wrong) + 1)))


def threshold_for_risk(scores: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest threshold whose answered images err at most ``target`` of the time (the widest coverage within the
    risk, found empirically); ``inf`` (answer nothing) when even the surest group errs more."""
    curve = risk_coverage(scores, correct)
    within = np.flatnonzero(curve["risk"] <= target)
    return float(curve["threshold"][within[-1]]) if len(within) else float("inf")


def coverage_and_risk(scores: np.ndarray, correct: np.ndarray, threshold: float) -> dict[str, float]:
    """The fraction of images scored at or above ``threshold`` (coverage) and the error rate among them (risk; 0 when
    none is answered)."""
    answered = np.asarray(scores) >= threshold
    wrong = ~np.asarray(correct, dtype=bool)
    return {"coverage": float(answered.mean()), "risk": float(wrong[answered].mean()) if answered.any() else 0.0}


def selective_metrics(scores: np.ndarray, correct: np.ndarray, threshold: float) -> dict[str, float]:
    """Coverage and risk of answering the images scored at or above ``threshold``, with the full-coverage risk and
    AURC beside them."""
    return {
        "threshold": float(threshold),
        **coverage_and_risk(scores, correct, threshold),
        "full_coverage_risk": float((~np.asarray(correct, dtype=bool)).mean()),
        "aurc": aurc(scores, correct),
    }


def risk_at_coverage(scores: np.ndarray, correct: np.ndarray, coverage: float) -> float:
    """The risk among the ``coverage`` fraction of images scored highest (at least one image; among equal scores,
    the wrong answers first)."""
    order = pessimistic_order(scores, correct)
    kept = order[: max(1, int(np.ceil(coverage * len(order))))]
    return float(1 - np.asarray(correct, dtype=bool)[kept].mean())


def abstain_rule(
    setting: str, target_risk: float, scores: np.ndarray | None, correct: np.ndarray | None, score: str
) -> dict:
    """The rule a card stores for ``--abstain`` ``setting`` on ``score`` (auto: the threshold for ``target_risk`` on
    the validation ``scores``/``correct``; a number: that threshold), with its validation coverage and risk where
    there is a split; ``off`` gives the auto rule (for the report)."""
    fixed = setting not in ("off", "auto")
    if scores is None or not len(scores):
        if not fixed:
            raise ImgclfError(f"--abstain {setting} needs a validation split to fit its threshold on")
        return {"score": score, "threshold": float(setting), "target_risk": None}
    threshold = float(setting) if fixed else threshold_for_risk(scores, correct, target_risk)
    if not np.isfinite(threshold):  # no answer is within the risk: only probabilities of 1, energies above all
        threshold = 1.0 if score == "probability" else float(np.nextafter(np.max(scores), np.inf))
    return {
        "score": score,
        "threshold": threshold,
        "target_risk": None if fixed else target_risk,
        "validation": {"images": len(scores), **coverage_and_risk(scores, correct, threshold)},
    }


def curve_points(scores: np.ndarray, correct: np.ndarray, points: int = 200) -> dict[str, list[float]]:
    """At most ``points`` evenly spaced points of the risk–coverage curve, for a figure (its ends kept)."""
    curve = risk_coverage(scores, correct)
    keep = np.unique(np.linspace(0, len(curve["coverage"]) - 1, points).round().astype(int))
    return {key: [round(float(v), 6) for v in curve[key][keep]] for key in ("coverage", "risk")}


def selective_summary(rule: dict, abstaining: bool, scores: np.ndarray, correct: np.ndarray) -> dict:
    """The report's account of a rule (fitted on validation) on the test ``scores``/``correct``: its coverage and
    risk there, AURC, full-coverage risk and the curve's points; ``abstaining``: whether the card applies it."""
    test = selective_metrics(scores, correct, rule["threshold"])
    return {**rule, "abstaining": abstaining, "test": test, "curve": curve_points(scores, correct)}
