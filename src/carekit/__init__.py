"""carekit: content-aware image restoration (CARE) for fluorescence microscopy.

>>> import carekit
>>> model = carekit.train(noisy, clean, axes="YX", model_dir="my_model")  # doctest: +SKIP
>>> restored = model.predict(new_noisy, axes="YX")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from carekit.chunked import restore_chunked
from carekit.config import Config, NetConfig, TrainConfig
from carekit.errors import CarekitError
from carekit.export import export
from carekit.metrics import evaluate
from carekit.model import CARE, load
from carekit.package import Package
from carekit.train import train

__all__ = [
    "CARE",
    "CarekitError",
    "Config",
    "NetConfig",
    "Package",
    "TrainConfig",
    "__version__",
    "evaluate",
    "export",
    "load",
    "restore_chunked",
    "train",
]
