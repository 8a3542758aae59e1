"""Grad-CAM explanations: the layer found in every network, maps that depend on the trained weights (Adebayo et al.
2018's model-randomisation check), `imgclf predict --explain`, the API's heatmaps and the report's gallery."""

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from scipy import stats

from imgclf.artifacts.runs import RunDir
from imgclf.cli import main
from imgclf.data.cifar import load_cifar10
from imgclf.inference.app import create_app
from imgclf.inference.explain import Explainer, load_explainer, overlay, saliency_layer
from imgclf.inference.load import load_network, load_predictor
from imgclf.models import create_model
from imgclf.models.transfer import TransferModel, build_network

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_29b1695"  # a ResNet-20 trained to 29% (test_run_files)
LITE = {"img_size": 224, "dropout": 0.0, "drop_path": 0.0, "unfreeze": "0"}
RANDOMISED_RHO = 0.5  # the bound: trained and randomised maps' mean rank correlation stays below it


@pytest.mark.parametrize(
    ("arch", "side", "layer", "grid"),
    [
        ({"name": "simple_cnn"}, 32, "7", 6),  # its last max-pool
        ({"name": "resnet20"}, 32, "blocks", 8),  # the last residual stage
        ({"name": "speed94"}, 32, "features.3.0", 7),  # the last group's convolution, before its pool to 3×3
        ({"name": "tf_efficientnet_lite0", **LITE}, 224, "bn2", 7),  # the head convolution
        ({"name": "tf_efficientnet_lite0", **LITE, "img_size": 96}, 96, "blocks.5.0.bn1", 6),  # bn2 is 3×3
    ],
)
def test_the_explained_feature_map_of_each_network(arch, side, layer, grid):
    """The last map with at least 6 cells a side (the last spatial one where none is that fine)."""
    model = build_network(arch, 10)
    network = (model.network if isinstance(model, TransferModel) else model).eval()
    name, module = saliency_layer(network, side)
    assert name == layer, name
    seen = []
    module.register_forward_hook(lambda m, i, out: seen.append(out.shape))
    network(torch.zeros(2, 3, side, side))
    assert seen[0][0] == 2 and seen[0][-2:] == (grid, grid)


def test_a_network_without_a_spatial_map_is_a_one_line_error():
    from imgclf.core.errors import ImgclfError

    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    with pytest.raises(ImgclfError, match="no spatial feature map"):
        saliency_layer(flat, 8)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rank correlation of each pair of maps (N, S, S)."""
    return np.array([stats.spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b, strict=True)])


def test_maps_depend_on_the_trained_weights(data_dir):
    """Model randomisation (Adebayo et al. 2018): the same ResNet-20 with re-initialised weights gives maps whose
    rank correlation with the trained model's is low; the trained model's own maps are reproduced exactly."""
    card = RunDir(FIXTURE).read_card()
    trained = load_network(card.architecture, card.num_classes, FIXTURE / "best.safetensors")
    images = load_cifar10("test", data_dir).images[:32]
    explainer = Explainer(trained, card)
    targets = np.zeros(len(images), int) + 3  # one class for all: the maps differ by the image alone
    maps = explainer.maps(images, targets)
    assert maps.shape == (32, 32, 32) and maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1)
    assert np.allclose(spearman(maps, explainer.maps(images, targets)), 1)
    torch.manual_seed(0)
    randomised = create_model("resnet20", num_classes=card.num_classes).eval()
    rho = spearman(maps, Explainer(randomised, card).maps(images, targets))
    assert np.nanmean(np.abs(rho)) < RANDOMISED_RHO, rho


def test_overlay_is_the_image_where_the_map_is_zero():
    image = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    heat = np.zeros((32, 32), np.float32)
    heat[:16] = 1.0
    picture = overlay(image, heat, side=32)
    assert picture.shape == (32, 32, 3) and picture.dtype == np.uint8
    assert np.array_equal(picture[20:], image.transpose(1, 2, 0)[20:])  # no colour where nothing was found
    assert not np.array_equal(picture[:12], image.transpose(1, 2, 0)[:12])
    assert overlay(image, heat).shape == (224, 224, 3)  # small images are enlarged for people


def test_predict_explain_writes_an_overlay_per_image(folder_run, tmp_path, capsys):
    folder = Path(RunDir(folder_run).read_config().data)
    files = sorted(folder.rglob("*.png"))[:3]
    out = tmp_path / "heatmaps"
    args = ["predict", str(folder_run), *map(str, files), "--format", "jsonl", "--explain", str(out)]
    assert main([*args, "--runtime", "onnxruntime" if (folder_run / "model.onnx").is_file() else "torch"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == 3 and "heatmaps (grad-cam at 7 (MaxPool2d)) written to" in captured.err
    written = sorted(out.iterdir())
    assert sorted(Path(r["heatmap"]) for r in rows) == written and len(written) == 3
    with Image.open(written[0]) as picture:
        assert picture.size == (224, 224) and picture.mode == "RGB"
    assert main([*args[:3], "--format", "csv", "--explain", str(out)]) == 0
    header = capsys.readouterr().out.splitlines()[0].split(",")
    assert header[-2:] == ["heatmap", "error"]


def test_predict_explain_refuses_what_it_cannot_explain(folder_run, tmp_path, capsys):
    image = next(Path(RunDir(folder_run).read_config().data).rglob("*.png"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["predict", str(folder_run), str(image), "--explain", str(blocker)]) == 2
    assert "--explain folder" in capsys.readouterr().err
    onnx = tmp_path / "model.onnx"
    assert main(["export", str(folder_run), "--output", str(onnx), "--check-images", "0"]) == 0
    capsys.readouterr()
    assert main(["predict", str(onnx), str(image), "--explain", str(tmp_path / "maps")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "heatmaps need the PyTorch weights" in err[0]


def png_size(url: str) -> tuple[int, int]:
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as picture:
        return picture.size


def test_the_api_returns_heatmaps_on_request(folder_run, tmp_path):
    image = next(Path(RunDir(folder_run).read_config().data).rglob("*.png")).read_bytes()
    with TestClient(create_app(load_predictor(folder_run, "cpu", runtime="torch"))) as client:
        plain = client.post("/predict", content=image, headers={"content-type": "image/png"}).json()
        assert "heatmap" not in plain["predictions"][0]
        answer = client.post("/predict?explain=1", content=image, headers={"content-type": "image/png"}).json()
        heatmap = answer["predictions"][0]["heatmap"]
        assert heatmap["class"] == answer["predictions"][0]["top"][0]["class"] and heatmap["method"] == "grad-cam"
        assert png_size(heatmap["png"]) == (224, 224)
        wrong = client.post("/predict?explain=maybe", content=image, headers={"content-type": "image/png"})
        assert wrong.status_code == 422 and "explain must be 1 or 0" in wrong.json()["error"]
    onnx = tmp_path / "model.onnx"
    assert main(["export", str(folder_run), "--output", str(onnx), "--check-images", "0"]) == 0
    with TestClient(create_app(load_predictor(onnx, "cpu"))) as client:  # no weights at hand: a clear 400
        refused = client.post("/predict?explain=1", content=image, headers={"content-type": "image/png"})
        assert refused.status_code == 400 and "no PyTorch weights" in refused.json()["error"]
    with TestClient(create_app(load_predictor(onnx, "cpu"), source=folder_run)) as client:  # the run's weights
        answer = client.post("/predict?explain=1", content=image, headers={"content-type": "image/png"}).json()
        assert png_size(answer["predictions"][0]["heatmap"]["png"]) == (224, 224)


def test_the_report_shows_the_mistakes_heatmaps(evaluated_runs, tmp_path):
    run = Path(shutil.copytree(evaluated_runs["resnet20"], tmp_path / "run"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert "figures/misclassified_gradcam.png" in metrics["figures"]
    with Image.open(run / "figures" / "misclassified_gradcam.png") as picture:
        assert picture.size[0] > 500
    assert "Grad-CAM heatmaps" in (run / "report.html").read_text()
    assert load_explainer(run).layer == "blocks (Sequential)"
