"""Classes of very different sizes: the ratio, each balance mode's loss or draw, balanced accuracy, and a run on a
long-tailed folder of real CIFAR-10 images that says what it does."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from imgclf.cli import main
from imgclf.data.balance import chosen_balance, class_counts, class_weights, imbalance_ratio, log_prior, sample_weights
from imgclf.data.images import ImageSet
from imgclf.data.loader import BatchLoader
from imgclf.training.balance import ClassBalance
from imgclf.training.validation import evaluate_loader

LONG_TAIL = (120, 40, 12)  # images per class: 10:1


def test_counts_ratio_and_the_remedies_ingredients():
    labels = torch.tensor([0] * 90 + [1] * 10)
    counts = class_counts(labels, 3)
    assert counts.tolist() == [90, 10, 0] and imbalance_ratio(counts[:2]) == 9.0
    weights = class_weights(counts[:2])
    torch.testing.assert_close((weights * counts[:2]).sum(), torch.tensor(100.0))  # the mean image weight stays 1
    torch.testing.assert_close(weights[1] / weights[0], torch.tensor(9.0))
    draw = sample_weights(labels, counts[:2])
    torch.testing.assert_close(draw[labels == 0].sum(), draw[labels == 1].sum())  # each class as likely
    torch.testing.assert_close(log_prior(counts[:2]).exp(), torch.tensor([0.9, 0.1]))
    assert [chosen_balance("auto", r) for r in (1.0, 2.9, 3.0, 50.0)] == ["none", "none", *["logit-adjust"] * 2]
    assert chosen_balance("sampler", 50.0) == "sampler" and chosen_balance("none", 50.0) == "none"


@pytest.mark.parametrize("mode", ["none", "weights", "logit-adjust", "sampler"])
def test_each_mode_computes_its_documented_loss(mode):
    torch.manual_seed(0)
    logits, labels = torch.randn(32, 2), torch.randint(0, 2, (32,))
    balance = ClassBalance(mode, (90, 10), 9.0)
    expected = {
        "none": F.cross_entropy(logits, labels, label_smoothing=0.1),
        "sampler": F.cross_entropy(logits, labels, label_smoothing=0.1),  # sampling balances, not the loss
        "weights": F.cross_entropy(logits, labels, weight=torch.tensor([100 / 180, 100 / 20]), label_smoothing=0.1),
        # smoothing spread in proportion to the prior: 0.9 · CE + 0.1 · Σ_c π_c · (−log p_c) on adjusted logits
        "logit-adjust": 0.9 * F.cross_entropy(logits + torch.tensor([0.9, 0.1]).log(), labels)
        - 0.1 * ((logits + torch.tensor([0.9, 0.1]).log()).log_softmax(1) * torch.tensor([0.9, 0.1])).sum(1).mean(),
    }[mode]
    torch.testing.assert_close(balance.loss_function("cpu")(logits, labels, 0.1), expected)
    assert (balance.sample_weights(labels) is not None) == (mode == "sampler")


@pytest.mark.parametrize("smoothing", [0.05, 0.1, 0.2])
def test_logit_adjustment_with_smoothing_keeps_the_true_class_first(smoothing):
    """At the loss's optimum for an image of the largest class, the network's own logits rank that class first on a
    100:1 split — with smoothing spread uniformly (PyTorch's) the rarest class would win (airplane recall 0.40 in
    benchmarks/results/long_tail_resnet20_e90.json)."""
    balance = ClassBalance("logit-adjust", (5000, 2000, 500, 50), 100.0)
    loss = balance.loss_function("cpu")
    z = torch.zeros(1, 4, requires_grad=True)
    optimizer = torch.optim.LBFGS([z], max_iter=500)

    def closure():
        optimizer.zero_grad()
        value = loss(z, torch.tensor([0]), smoothing)
        value.backward()
        return value

    optimizer.step(closure)
    assert z.argmax().item() == 0
    others = z.detach()[0, 1:]
    assert float(others.max() - others.min()) < 1e-3  # the other classes alike: no class favoured for its rarity


def test_the_sampler_draws_classes_equally_and_reproducibly():
    labels = torch.tensor([0] * 900 + [1] * 100)
    data = ImageSet(torch.zeros(1000, 3, 4, 4, dtype=torch.uint8), labels, ["a", "b"])
    loader = BatchLoader(data, 100, (0.0,) * 3, (1.0,) * 3, shuffle=True, seed=3)
    loader.sample_weights = ClassBalance("sampler", (900, 100), 9.0).sample_weights(labels)
    drawn = torch.cat([y for _, y in loader])
    assert len(drawn) == 1000 and 0.45 < drawn.float().mean() < 0.55  # ~half the draws from the 10% class
    assert torch.equal(drawn, torch.cat([y for _, y in loader]))  # epoch e of seed s: the same draws
    loader.set_epoch(1)
    assert not torch.equal(drawn, torch.cat([y for _, y in loader]))


def test_balanced_accuracy_of_a_majority_guesser_is_one_half():
    labels = torch.tensor([0] * 90 + [1] * 10)
    data = ImageSet(torch.zeros(100, 3, 4, 4, dtype=torch.uint8), labels, ["a", "b"])
    loader = BatchLoader(data, 32, (0.0,) * 3, (1.0,) * 3)

    class Majority(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[2.0, 0.0]]).expand(len(x), 2)

    result = evaluate_loader(Majority(), loader, torch.device("cpu"), "fp32", 2)
    assert result["acc"] == pytest.approx(0.9) and result["balanced_acc"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def long_tail(tmp_path_factory, cifar_train):
    """DIR/<class>/… of real CIFAR-10 images, 120 airplanes, 40 cars and 12 birds (10:1)."""
    root = tmp_path_factory.mktemp("lt") / "long_tail"
    labels = cifar_train.labels.numpy()
    for label, (name, count) in enumerate(zip(("airplane", "automobile", "bird"), LONG_TAIL, strict=True)):
        (root / name).mkdir(parents=True)
        for i, row in enumerate(np.flatnonzero(labels == label)[:count]):
            image = cifar_train.images[int(row)].permute(1, 2, 0).numpy()
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
    return root


def test_a_long_tailed_run_says_what_it_does_and_reports_balanced_accuracy(long_tail, tmp_path, capsys):
    common = ["--data", str(long_tail), "--model", "simple_cnn", "--epochs", "2", "--batch-size", "16"]
    common += ["--output", str(tmp_path), "--prepare-dir", str(tmp_path / "p"), "--no-progress", "--no-tensorboard"]
    assert main(["train", "--name", "auto", *common]) == 0
    err = capsys.readouterr().err
    run = tmp_path / "auto"
    summary = json.loads((run / "summary.json").read_text())
    counts = summary["balance"]["counts"]  # the training split's, after test and validation were held out
    largest, smallest = max(counts), min(counts)
    assert f"training split is imbalanced: {largest} images in its largest class, {smallest} in its smallest" in err
    assert "logit-adjusted cross-entropy, and keeping the epoch of best val balanced acc" in err
    assert summary["balance"]["mode"] == "logit-adjust" and summary["balance"]["monitor"] == "val_balanced_acc"
    assert "best_val_balanced_acc" in summary
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert all(0 <= h["val_balanced_acc"] <= 1 for h in history)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["imbalance_ratio"] > 3 and 0 <= metrics["balanced_accuracy"] <= 1
    assert [v["train_images"] for v in metrics["per_class"].values()] == summary["balance"]["counts"]
    assert metrics["temperature_fitted_on"]["split"] == "validation"
    page = (run / "report.html").read_text()
    assert "balanced accuracy" in page and "largest class first (imbalance" in page
    assert page.index(">airplane<") < page.index(">automobile<") < page.index(">bird<")  # largest class first
    said = {
        "none": "training on the imbalance as it is (--balance none)",
        "weights": "weighting the loss by inverse class size",
        "sampler": "drawing every class equally often",
    }
    for mode, line in said.items():
        assert main(["train", "--name", mode, "--balance", mode, "--no-evaluate", *common]) == 0
        assert line in capsys.readouterr().err
        assert json.loads((tmp_path / mode / "summary.json").read_text())["balance"]["mode"] == mode


def test_explore_states_the_imbalance(long_tail, tmp_path, capsys):
    assert main(["explore", "--data", str(long_tail), "--output", str(tmp_path), "--per-class", "2"]) == 0
    assert "imbalanced: 120 images in the largest class, 12 in the smallest (10:1)" in capsys.readouterr().out
    assert json.loads((tmp_path / "stats.json").read_text())["imbalance_ratio"] == 10.0
