"""qnnrun: an experiment runner for quantization-aware training of low-bit networks."""

__version__ = "0.1.0"
