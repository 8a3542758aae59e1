"""What a model path names, checked without torch: ``imgclf serve`` refuses a path that is no model in one line
before it binds, and answers /health before the model (and torch) is loaded."""

from pathlib import Path

from imgclf.artifacts.files import run_config
from imgclf.core.errors import ImgclfError

MODEL_SUFFIXES = (".onnx", ".safetensors")  # model files imgclf writes; anything else is a run directory


def onnx_metadata(path: Path) -> dict[str, str]:
    """The metadata of an ONNX file (its weights are not loaded)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for files that are not ONNX
        raise ImgclfError(f"not an ONNX model: {path} ({type(exc).__name__})") from None
    if not model.ir_version or not len(model.graph.node):  # protobuf reads many short byte strings as an empty model
        raise ImgclfError(f"not an ONNX model: {path} (no graph)")
    return {p.key: p.value for p in model.metadata_props}


def model_path(source: str | Path) -> Path:
    """``source`` as a path that exists and is a run directory (with its config), an ONNX model or a weights file;
    a one-line error otherwise."""
    path = Path(source).expanduser()
    if not path.exists():
        raise ImgclfError(f"no such run directory or model file: {source}")
    if path.is_dir():
        run_config(path)
    elif path.suffix == ".onnx":
        onnx_metadata(path)
    elif path.suffix not in MODEL_SUFFIXES:
        raise ImgclfError(f"{path} is not a run directory, .safetensors or .onnx file")
    return path
