"""What the inference commands accept, importable without torch: the command line builds its options from here."""

import dataclasses

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
ONNX_RUNTIMES = ("onnxruntime", "openvino")  # the runtimes of an exported .onnx file (openvino: imgclf[openvino])
OUTPUT_FORMATS = ("table", "csv", "jsonl", "parquet")  # imgclf predict --format (parquet: with --ray)
EXPORT_FORMATS = ("onnx",)  # imgclf export --format
PARITY_IMAGES = 1000  # validation images of the export's parity check
MAX_DROP = 0.5  # points of validation accuracy an int8 export may lose (imgclf export --max-drop)


@dataclasses.dataclass
class Limits:
    """What one request may ask of the server (`imgclf serve` has an option for each)."""

    max_body_bytes: int = 16_000_000
    max_pixels: int = 40_000_000
    max_images: int = 32
    timeout_seconds: float = 30.0
    header_timeout_seconds: float = 10.0  # for a request's head: slower clients are disconnected (slowloris)
    max_concurrency: int = 64
    top_k: int = 5
    batch_window_ms: float = 0.0  # > 0: wait this long for more requests before predicting a batch
    max_batch: int = 64
