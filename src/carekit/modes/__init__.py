"""The restoration modes, one file each; importing this package registers them all.

Each file declares its :class:`~carekit.registry.Mode` (configuration part, data, network,
prediction, command-line options, what it supports) and its training function.
"""

from carekit.modes.denoise import train
from carekit.modes.isotropic import train_isotropic
from carekit.modes.n2n import train_n2n
from carekit.modes.n2v import train_n2v
from carekit.modes.projection import train_projection
from carekit.modes.synthetic import train_synthetic
from carekit.modes.upsampling import train_upsampling
from carekit.registry import MODES

__all__ = ["MODES", "train", "train_isotropic", "train_n2n", "train_n2v", "train_projection", "train_synthetic",
           "train_upsampling"]  # fmt: skip
