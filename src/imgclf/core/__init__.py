"""The bottom layer: errors, file I/O, the device and its precision, ONNX sessions. Imports nothing of imgclf above."""
