"""Stage three: export to ONNX / TensorRT / TFLite and check every artifact against PyTorch."""
