"""The composite projection network: a 3D stack in, a denoised 2D surface image out.

A small 3D U-Net that pools only in y and x scores every voxel; a softmax over z turns
the scores into weights, and the weighted sum over z projects the stack onto one
surface. A 2D CARE U-Net then restores that image. Both parts train together with the
loss on the 2D output only.

Surfaces bend slowly compared with the pixel grid, so the scores can be computed on a stack
averaged over ``proj_pool`` x ``proj_pool`` pixels and interpolated back: the 3D part, most of a
training step's cost at full resolution, then costs ``proj_pool**2`` times less, and it sees
``proj_pool`` times further.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from carekit.nets.unet import UNet, build_unet


class ProjectionNet(nn.Module):
    """``(N, C, Z, Y, X)`` -> ``(N, C_out, Y, X)``.

    Parameters
    ----------
    in_channels, out_channels : int
    proj_depth, proj_features, proj_kernel : int
        The 3D projection U-Net (pooling in y and x only).
    proj_pool : int
        Lateral averaging before the 3D part (1: full resolution).
    **unet
        Settings of the 2D restoration U-Net (see :class:`~carekit.nets.unet.UNet`).
    """

    ndim = 2  # the result is 2D; layouts and tiling follow the 2D part

    def __init__(self, in_channels: int, out_channels: int, *, proj_depth: int = 2, proj_features: int = 8,
                 proj_kernel: int = 3, proj_pool: int = 1, **unet) -> None:  # fmt: skip
        super().__init__()
        self.project = UNet(3, in_channels, 1, depth=proj_depth, n_first=proj_features, kernel_size=proj_kernel,
                            residual=False, pool=(1, 2, 2))  # fmt: skip
        self.restore = build_unet(2, in_channels, out_channels, **unet)
        self.residual = self.restore.residual
        self.lateral = int(proj_pool)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Per-voxel scores ``(N, 1, Z, Y, X)`` (float32) from the laterally averaged stack."""
        f = self.lateral
        coarse = F.avg_pool3d(x, (1, f, f)) if f > 1 else x
        s = self.project(coarse).float()
        if f > 1:
            s = F.interpolate(s, size=x.shape[2:], mode="trilinear", align_corners=False)
        return s

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Per-voxel projection weights ``(N, 1, Z, Y, X)``, summing to 1 over z."""
        return torch.softmax(self.scores(x), dim=2)

    def forward(self, x: torch.Tensor, *, with_height: bool = False) -> torch.Tensor:
        w = self.weights(x)
        image = (w * x.float()).sum(dim=2)
        out = self.restore(image.to(x.dtype))
        if not with_height:
            return out
        z = torch.arange(x.shape[2], device=x.device, dtype=w.dtype).view(1, 1, -1, 1, 1)
        height = (w * z).sum(dim=2)  # expected z of the surface
        return torch.cat([out.float(), height], dim=1)

    def example_shape(self) -> tuple[int, ...]:
        """A small input to time: 16 slices of the restoration network's example."""
        lateral = [-(-e // g) * g for e, g in zip(self.restore.example_shape()[2:], self.divisor(), strict=True)]
        return (1, self.project.in_channels, 16, *lateral)

    def divisor(self) -> tuple[int, int]:
        a, b = self.project.divisor()[1:], self.restore.divisor()
        return tuple(max(p * self.lateral, q) for p, q in zip(a, b, strict=True))

    def halo(self) -> tuple[int, int]:
        """The 3D part's halo in full-resolution pixels (plus one coarse pixel the interpolation
        reads) and the 2D part's, rounded up to the grid."""
        grid, f = self.divisor(), self.lateral
        total = [(p + 1) * f + q for p, q in zip(self.project.halo()[1:], self.restore.halo(), strict=True)]
        return tuple(-(-h // g) * g for h, g in zip(total, grid, strict=True))

    def bytes_per_voxel(self) -> int:
        """Per output pixel; the 3D part counts once per z-slice (see ``depth``)."""
        return self.restore.bytes_per_voxel()

    def bytes_per_pixel(self, depth: int) -> int:
        """Per output pixel: the 2D part, the 3D part at its resolution and the full-resolution
        scores and weights (float32) of every z-slice."""
        coarse = self.project.bytes_per_voxel() // self.lateral**2
        return self.restore.bytes_per_voxel() + depth * (coarse + (8 if self.lateral > 1 else 0))
