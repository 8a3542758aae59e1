"""Using a trained model: the one logits path (predictor), ONNX export, batch prediction and the HTTP server."""
