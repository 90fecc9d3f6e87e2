"""Quantization numerics: pure functions (``functional``), quantizer modules (``quantizers``,
``learned``) with their integer forms (``grids``), quantized layers (``layers``), calibration,
BatchNorm folding and model conversion (``convert``)."""
