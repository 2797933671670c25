"""carekit: content-aware image restoration (CARE) for fluorescence microscopy.

>>> import carekit
>>> model = carekit.train(noisy, clean, axes="YX", model_dir="my_model")  # doctest: +SKIP
>>> model = carekit.train_n2v(noisy, axes="YX", model_dir="n2v_model")  # no clean images  # doctest: +SKIP
>>> restored = model.predict(new_noisy, axes="YX")  # doctest: +SKIP
"""

from carekit._version import __version__
from carekit.app import load
from carekit.bioimageio import export
from carekit.chunked import restore_chunked
from carekit.config import Config, NetConfig, TrainConfig
from carekit.errors import CarekitError
from carekit.metrics import evaluate
from carekit.model import CARE
from carekit.modes import (
    train,
    train_isotropic,
    train_n2n,
    train_n2v,
    train_projection,
    train_synthetic,
    train_upsampling,
)
from carekit.package import Package

__all__ = ["CARE", "CarekitError", "Config", "NetConfig", "Package", "TrainConfig", "__version__", "evaluate", "export",
           "load", "restore_chunked", "train", "train_isotropic", "train_n2n", "train_n2v", "train_projection",
           "train_synthetic", "train_upsampling"]  # fmt: skip
