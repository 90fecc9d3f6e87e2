"""qnnrun: an experiment runner for quantization-aware training of low-bit networks."""

__version__ = "0.1.0"

from pathlib import Path

# Every command's configs: conf/ beside the package (a link in a checkout, a folder in a wheel).
# Each method's options are the keys of its own conf/method/<name>.yaml.
CONFIG_DIR = Path(__file__).resolve().parent / "conf"

from qnnrun.schema import register as _register_schemas  # noqa: E402  (conf/ extends the schemas)

_register_schemas()
