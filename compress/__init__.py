"""Stage two: quantization-aware distillation (INT8). Lands with the QAT issue."""
