"""The names users choose among for their images: how a non-square image becomes a square, and the augmentation
policies, balance modes and tasks. Torch-free: the command line reads them before it imports torch."""

RESIZE_POLICIES = ("crop", "pad", "stretch")  # shorter side then centre crop, pad the longer side, stretch (decode.py)
AUGMENTATIONS = ("fast", "alternating", "reference", "trivial", "none")  # augment.py implements them
IMBALANCED = 3.0  # largest class over smallest from which imgclf balances (and selects on balanced accuracy)
# how training answers classes of very different sizes (data/balance.py, training/balance.py); auto: by the ratio
BALANCE_MODES = ("auto", "none", "weights", "sampler", "logit-adjust")
# one class per image, or any number (sigmoid outputs, per-class thresholds); auto: a label file with a row of several
TASKS = ("auto", "single", "multilabel")
