"""Networks as ONNX graphs and onnxruntime sessions: the one home of the exporter choice and the session settings.

Used by ``imgclf export`` (a run's whole network), by the ONNX predictor and by the activation cache (a frozen
backbone prefix, which onnxruntime runs faster than PyTorch on a CPU: data/features.py).
"""

import contextlib
import io
import warnings
from pathlib import Path

import torch

from imgclf.core.errors import ImgclfError

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


def onnx_session(path: Path, threads: int = 0):
    """An onnxruntime CPU session of the ONNX file at ``path`` (``threads`` intra-op threads, 0: its own choice)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for damaged files
        raise ImgclfError(f"cannot load the ONNX model {path}: {str(exc).splitlines()[0]}") from None
