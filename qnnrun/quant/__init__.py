"""Quantization numerics: pure functions (``functional``), stateful modules (``layers``), model conversion (``convert``)."""
