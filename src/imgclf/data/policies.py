"""The names users choose among for their images: how a non-square image becomes a square, and the augmentation
policies. Torch-free: the command line reads them before it imports torch."""

RESIZE_POLICIES = ("crop", "pad", "stretch")  # shorter side then centre crop, pad the longer side, stretch (decode.py)
AUGMENTATIONS = ("fast", "alternating", "reference", "trivial", "none")  # augment.py implements them
