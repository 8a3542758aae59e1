"""Networks as ONNX graphs, onnxruntime sessions and OpenVINO models: the one home of the exporter choice and of each
runtime's settings.

Used by ``imgclf export`` (a run's whole network), by the ONNX predictors and by the activation cache (a frozen
backbone prefix, which onnxruntime runs faster than PyTorch on a CPU: data/features.py). OpenVINO is an optional
extra (``imgclf[openvino]``): it compiles the same ``.onnx`` files.
"""

import contextlib
import functools
import io
import warnings
from pathlib import Path

import torch

from imgclf.core.errors import OPENVINO_MISSING, ImgclfError

OPSET = 18
INPUT_NAME = "images"  # the graph's input: normalised float32 images (batch, 3, side, side)


def export_network(
    network: torch.nn.Module, side: int, path: Path, opset: int = OPSET, output_name: str = "logits"
) -> str:
    """Write ``network`` (fp32, CPU) to ``path`` as ONNX with a dynamic batch axis; the exporter used.

    PyTorch's current exporter (``torch.export``, ``dynamo=True``) runs first, the TorchScript exporter where it fails.
    """
    network = network.float().cpu().eval().to(memory_format=torch.contiguous_format)
    sample = torch.zeros(2, 3, side, side)
    names = dict(input_names=[INPUT_NAME], output_names=[output_name], opset_version=opset)
    errors = []
    for exporter in ("dynamo", "torchscript"):
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                if exporter == "dynamo":
                    batch = torch.export.Dim("batch", min=1, max=65536)
                    # the weights inside the file: no "<file>.data" beside it for a rename to orphan
                    shapes = {"dynamic_shapes": ({0: batch},), "external_data": False}
                    torch.onnx.export(network, (sample,), str(path), dynamo=True, **shapes, **names)
                else:
                    axes = {INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}}
                    torch.onnx.export(network, (sample,), str(path), dynamo=False, dynamic_axes=axes, **names)
                return exporter
            except Exception as exc:  # each exporter fails in its own ways on unusual layers
                errors.append(f"{exporter}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                path.unlink(missing_ok=True)
    raise ImgclfError(f"ONNX export failed ({'; '.join(errors)})"[:400])


OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}  # imgclf's precision → OpenVINO's inference precision hint


def onnx_session(path: Path, threads: int = 0, spinning: bool = True):
    """An onnxruntime CPU session of the ONNX file at ``path`` (``threads`` intra-op threads, 0: its own choice).

    ``spinning`` False: the intra-op threads sleep between runs instead of spinning, which ``imgclf serve`` wants —
    spinning threads take the cores from the requests' Python work between two batches (ResNet-20 int8 served at
    concurrency 32: p99 34 → 25 ms, benchmarks/results/serve_no_spin.json) — while batch prediction keeps them
    spinning (int8 ResNet-20 at batch 64: 7,139 img/s spinning, 6,152 not; onnx_prepare.json)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for damaged files
        raise ImgclfError(f"cannot load the ONNX model {path}: {str(exc).splitlines()[0]}") from None


@functools.cache
def openvino_installed() -> bool:
    """True when the optional OpenVINO runtime imports (a broken install counts as missing)."""
    try:
        import openvino  # noqa: F401
    except Exception:  # ImportError, or a shared library that does not load
        return False
    return True


def openvino_version() -> str | None:
    """The installed OpenVINO's version (None: not installed)."""
    if not openvino_installed():
        return None
    import openvino

    return openvino.__version__


def openvino_model(path: Path, precision: str = "fp32", threads: int = 0):
    """An OpenVINO CPU model compiled from the ONNX file at ``path``, computing at ``precision`` (fp32 or bf16; the
    int8 layers of a quantized file stay int8 either way), tuned for latency (``threads``: 0, its own choice)."""
    if not openvino_installed():
        raise ImgclfError(OPENVINO_MISSING)
    import openvino

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        return openvino.Core().compile_model(str(path), "CPU", config)
    except Exception as exc:  # OpenVINO raises RuntimeError with multi-line messages for unreadable files
        raise ImgclfError(f"cannot load the ONNX model {path} in OpenVINO: {str(exc).splitlines()[0]}") from None
