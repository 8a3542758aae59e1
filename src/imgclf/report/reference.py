"""The reference study that imgclf reproduces on CIFAR-10: its dataset name and its published test accuracies."""

# display name of CIFAR-10, and of the dataset of a metrics.json written before metrics named their dataset
CIFAR10 = "CIFAR-10"

# test accuracy published by the reference Keras notebook on an A100 (CIFAR-10), keyed by the study's run names
REFERENCE_ACCURACY = {
    "simple_cnn": 0.6747,
    "vgg10": 0.8208,
    "resnet20": 0.8770,
    "transfer_96": 0.9042,  # EfficientNetV2-B0 transfer learning at 96 px
    "transfer_224": 0.9397,  # EfficientNetV2-B0 transfer learning at 224 px
}
# runs named otherwise are matched by model name, which identifies only the networks trained from scratch
FROM_SCRATCH = ("simple_cnn", "vgg10", "resnet20")


def dataset_name(metrics: dict) -> str:
    """The display name of the dataset a run was evaluated on (CIFAR-10 for metrics that predate the field)."""
    return metrics.get("dataset", CIFAR10)


def reference_accuracy(run: dict) -> float | None:
    """The reference's test accuracy for ``run``, matched by run name, else by from-scratch model name."""
    if run["run"] in REFERENCE_ACCURACY:
        return REFERENCE_ACCURACY[run["run"]]
    return REFERENCE_ACCURACY[run["model"]] if run["model"] in FROM_SCRATCH else None


def add_reference(runs: list[dict]) -> None:
    """Set each run's reference accuracy and its difference to it, when all runs are on CIFAR-10 and one matches."""
    if any(r["dataset"] != CIFAR10 for r in runs):
        return
    found = [reference_accuracy(r) for r in runs]
    if all(a is None for a in found):
        return
    for run, reference in zip(runs, found, strict=True):
        run["reference_accuracy"] = reference
        run["vs_reference"] = None if reference is None else run["test_accuracy"] - reference
