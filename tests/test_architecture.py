"""The layers of the house (pyproject.toml's import contracts): every import points down, no package has a cycle,
and serving or predicting loads nothing of training."""

import subprocess
import sys
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def test_every_import_points_down_and_no_package_has_a_cycle(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_a_contract_breaks_on_an_upward_import(tmp_path):
    """The contracts can fail: a copy of the package where data imports training breaks the layers contract."""
    import shutil

    shutil.copytree(ROOT / "src" / "imgclf", tmp_path / "imgclf")
    with open(tmp_path / "imgclf" / "data" / "augment.py", "a") as f:
        f.write("\nimport imgclf.training.schedule  # noqa: E402, F401\n")
    code = (
        "import sys\nfrom importlinter.cli import lint_imports\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "imgclf.data is not allowed to import imgclf.training" in result.stdout


def test_serving_and_predicting_load_nothing_of_training():
    code = (
        "import sys, imgclf.cli, imgclf.inference.serve, imgclf.inference.predict, imgclf.inference.export\n"
        "import imgclf.inference.app, imgclf.inference.load, imgclf.inference.quantize\n"
        "print(sorted(m for m in sys.modules if m.startswith('imgclf.training')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_server_answers_before_torch_is_imported():
    """`imgclf serve` checks the model's path, binds and answers /health with nothing of torch imported: the
    loading thread imports it."""
    code = (
        "import sys, imgclf.cli, imgclf.inference.serve, imgclf.inference.app\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxruntime', 'timm')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
