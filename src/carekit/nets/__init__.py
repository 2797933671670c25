"""Torch modules only."""

from carekit.nets.unet import UNet, count_parameters

__all__ = ["UNet", "count_parameters"]
