"""Stage two: INT8 quantization of the distilled student with NNCF, then quantization-aware distillation."""
