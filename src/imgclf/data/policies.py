"""The names users choose among for their images: how a non-square image becomes a square, and the augmentation
policies, balance modes, tasks and abstain scores. Torch-free: the command line reads them before it imports torch."""

RESIZE_POLICIES = ("crop", "pad", "stretch")  # shorter side then centre crop, pad the longer side, stretch (decode.py)
AUGMENTATIONS = ("fast", "alternating", "reference", "trivial", "none")  # augment.py implements them
IMBALANCED = 3.0  # largest class over smallest from which imgclf balances (and selects on balanced accuracy)
# how training answers classes of very different sizes (data/balance.py, training/balance.py); auto: by the ratio
BALANCE_MODES = ("auto", "none", "weights", "sampler", "logit-adjust")
# one class per image, or any number (sigmoid outputs, per-class thresholds); auto: a label file with a row of several
TASKS = ("auto", "single", "multilabel")
# what an abstaining model thresholds (inference/predictor.py computes each from the logits): the energy, their
# logsumexp (Liu et al. 2020), or the calibrated probability of the top class. The first is the default: it told
# novel classes from known ones best (benchmarks/results/abstain.json)
ABSTAIN_SCORES = {
    "energy": "the energy of the logits (their logsumexp)",
    "probability": "the calibrated probability of the top class",
}


def below_threshold(rule: dict) -> str:
    """Where an abstain ``rule`` (score, threshold) answers unknown, in words: 'top class below 80.0%' or 'energy
    below 7.31'."""
    if rule["score"] == "probability":
        return f"top class below {rule['threshold']:.1%}"
    return f"energy below {rule['threshold']:.3g}"
