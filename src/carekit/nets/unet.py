"""The n-dimensional CARE U-Net.

Two 'same'-padded conv+ReLU layers per level, 2x max-pooling, nearest upsampling and
concatenated skips; features ``n_first * 2**level``; a linear 1x1 output layer; the
input is added back when input and output channel counts match. With the reference
defaults (depth 2, 32 first features, kernel 5 in 2D) it has 922,977 parameters.

The first convolution after each upsampling reads ``[upsampled, skip]``. It is computed
without building either tensor: a convolution of a nearest-upsampled image equals, at each
output phase (position modulo the pooling factor), a smaller convolution of the
low-resolution image with summed taps. So the upsampled half runs at low resolution with
``ceil``-sized kernels (2 instead of 3 taps per axis for kernel 3, 3 instead of 5 for kernel
5), and the skip half is a plain convolution added in. The weights are those of the
ordinary convolution; outputs and gradients are the same up to float rounding.

Two variants serve self-supervised training (N2V2, Hock et al. 2022), whose blind-spot networks
otherwise show checkerboard artefacts: blur pooling (a stride-1 maximum, then a [1, 2, 1] blur
sampled every second pixel) instead of max pooling, and no skip connection at the top level
(which then upsamples linearly).
:class:`ChannelwiseUNet` restores each channel with a network of its own.

A :class:`FilterBlend`, fitted after training on the validation patches, mixes a Gaussian filter of
the input into the output (per channel: ``weight * output + gain * gaussian(input) + offset``).
It filters by shifted sums, not convolutions, so exported graphs keep the U-Net's convolutions
alone (the int8 copy quantizes those by position).
"""

from __future__ import annotations

import copy
import functools
import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from carekit.nets import fused

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_F = {2: F.conv2d, 3: F.conv3d}
POOL = {2: F.max_pool2d, 3: F.max_pool3d}
LINEAR = {2: "bilinear", 3: "trilinear"}
NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
SCALE_FLOOR = 1e-3  # smallest Laplace scale, in normalised intensity units
GAUSS_TRUNCATE = 4.0  # a Gaussian kernel reaches this many sigmas each side (scipy.ndimage's default)
BLEND_KEYS = ("sigma", "weight", "gain", "offset")


def gaussian_taps(sigma: float) -> list[float]:
    """The normalised 1D Gaussian kernel of ``sigma`` pixels, ``2 * radius + 1`` taps."""
    radius = int(GAUSS_TRUNCATE * sigma + 0.5)
    taps = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
    total = sum(taps)
    return [t / total for t in taps]


def gaussian(x: torch.Tensor, sigmas: tuple[float, ...]) -> torch.Tensor:
    """``x`` ``(N, C, *spatial)`` filtered by a Gaussian of ``sigmas`` pixels per spatial axis (0 leaves
    an axis alone), edges extended by their last pixel; as shifted, weighted sums of slices."""
    spatial = x.ndim - 2
    for axis, sigma in zip(range(2, x.ndim), sigmas, strict=True):
        if sigma <= 0:
            continue
        taps = gaussian_taps(sigma)
        radius = len(taps) // 2
        pad = [0, 0] * spatial
        pad[2 * (x.ndim - 1 - axis)] = pad[2 * (x.ndim - 1 - axis) + 1] = radius
        padded = F.pad(x, pad, mode="replicate")
        total = None
        for k, tap in enumerate(taps):
            index = [slice(None)] * x.ndim
            index[axis] = slice(k, k - 2 * radius if k < 2 * radius else None)
            shifted = padded[tuple(index)]
            total = shifted * tap if total is None else total.add_(shifted, alpha=tap)
        x = total
    return x


class FilterBlend(nn.Module):
    """Per channel ``c``: ``weight[c] * output + gain[c] * gaussian(input, sigma) + offset[c]``, in float32.

    The input's channel ``c`` is filtered for the output's channel ``c`` (same channel counts)."""

    def __init__(self, sigma: list[float], weight: list[float], gain: list[float], offset: list[float]) -> None:
        super().__init__()
        self.sigma = tuple(float(s) for s in sigma)
        for name, values in (("weight", weight), ("gain", gain), ("offset", offset)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32), persistent=False)

    def settings(self) -> dict:
        """The keyword settings this blend was made from."""
        values = {k: [float(v) for v in getattr(self, k).tolist()] for k in BLEND_KEYS[1:]}
        return {"sigma": list(self.sigma), **values}

    def radius(self) -> tuple[int, ...]:
        """Pixels read on each side, per spatial axis."""
        return tuple(len(gaussian_taps(s)) // 2 if s > 0 else 0 for s in self.sigma)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        c = self.weight.shape[0]
        shape = (1, c) + (1,) * (x.ndim - 2)
        with torch.autocast(x.device.type, enabled=False):
            smoothed = gaussian(x[:, :c].float(), self.sigma)
            return (out.float() * self.weight.reshape(shape) + smoothed * self.gain.reshape(shape)
                    + self.offset.reshape(shape))  # fmt: skip


def blend_of(settings: dict | None) -> FilterBlend | None:
    return FilterBlend(**{k: settings[k] for k in BLEND_KEYS}) if settings else None


def conv_block(ndim: int, widths: list[int], kernel: tuple[int, ...], batch_norm: bool) -> nn.Sequential:
    """Convolutions ``widths[0] -> widths[1] -> ...``, each followed by ReLU."""
    layers: list[nn.Module] = []
    for cin, cout in itertools.pairwise(widths):
        layers.append(CONV[ndim](cin, cout, kernel, padding=tuple(k // 2 for k in kernel), bias=not batch_norm))
        if batch_norm:
            layers.append(NORM[ndim](cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


@functools.lru_cache
def phase_taps(p: int, k: int) -> tuple[tuple, int, int] | None:
    """How nearest upsampling by ``p`` followed by a kernel-``k`` convolution reads the low-res image.

    Output ``i = p*m + a`` (phase ``a``) reads low-res ``m + (a + d - k//2) // p`` at tap ``d``.
    Returns ``(taps, pad, delta)``: ``taps[a][t][d]`` is 1 where tap ``d`` of phase ``a`` lands
    on phase tap ``t``; a convolution with ``len(taps[0])`` taps and padding ``pad`` gives
    phase ``a`` at outputs ``m + a*delta``. None where the phases do not line up that way.
    """
    r = k // 2
    offsets = [[(a + d - r) // p for d in range(k)] for a in range(p)]
    lo = [min(o) for o in offsets]
    n_taps = max(max(o) - min(o) + 1 for o in offsets)
    pad = -lo[0]
    shift = [low - lo[0] for low in lo]
    delta = shift[1] if p > 1 else 0
    if shift != [a * delta for a in range(p)] or shift[-1] > 2 * pad - n_taps + 1:
        return None
    taps = tuple(
        tuple(tuple(int(o - low == t) for o in offs) for t in range(n_taps))
        for offs, low in zip(offsets, lo, strict=True)
    )
    return taps, pad, delta


def phase_split(t: torch.Tensor, pool: tuple[int, ...]) -> torch.Tensor:
    """View ``(N, C, *S)`` as ``(N, S_1/p_1, p_1, ..., C)`` (a view in any memory layout)."""
    for i, p in enumerate(pool):
        t = t.unflatten(2 + 2 * i, (t.shape[2 + 2 * i] // p, p))
    return t.movedim(1, -1)


def max_pool(x: torch.Tensor, pool: tuple[int, ...]) -> torch.Tensor:
    """Max pooling by ``pool``; without gradients, as elementwise maxima of strided slices.

    In bfloat16 channels-last that is 1.5-5x faster than the pooling kernel on large tiles.
    Training keeps the pooling kernel (its backward routes each gradient to one input).
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return POOL[x.ndim - 2](x, pool)
    for axis, p in enumerate(pool, start=2):
        if p > 1:
            whole = x.narrow(axis, 0, x.shape[axis] - x.shape[axis] % p)
            parts = [whole[(slice(None),) * axis + (slice(a, None, p),)] for a in range(p)]
            x = functools.reduce(torch.maximum, parts)
    return x


def blur_pool(x: torch.Tensor, pool: tuple[int, ...]) -> torch.Tensor:
    """Blur pooling by 2 along the axes where ``pool`` is 2: the maximum of each pixel and its next
    neighbour, then ``[1, 2, 1] / 4`` taken at every second pixel (edges repeated).

    Unlike max pooling, the result barely changes when the input shifts by one pixel, so a
    network does not learn patterns tied to the pooling grid. Written with slices only, so it
    traces and exports as it runs.
    """
    for axis, p in enumerate(pool, start=2):
        if p == 1:
            continue
        if p != 2:
            raise ValueError(f"blur pooling pools by 2, got {p}")
        n = x.shape[axis] - x.shape[axis] % 2
        x = x.narrow(axis, 0, n)
        after = torch.cat([x.narrow(axis, 1, n - 1), x.narrow(axis, n - 1, 1)], dim=axis)
        peaks = torch.maximum(x, after)
        m = torch.cat([peaks.narrow(axis, 0, 1), peaks], dim=axis)  # m[k]: the maximum at k - 1
        index = (slice(None),) * axis
        x = (m[(*index, slice(0, n, 2))] + 2 * m[(*index, slice(1, n + 1, 2))] + m[(*index, slice(2, n + 1, 2))]) / 4
    return x


class PhaseAdd(torch.autograd.Function):
    """``skip_part`` plus the phase convolution's output, interleaved back to full resolution."""

    @staticmethod
    def forward(ctx, skip_part, phases, pool, delta):
        spec = phase_view(phases, skip_part.shape, pool, delta)
        ctx.spec, ctx.pool = (phases.shape, phases.stride(), phases.dtype, phases.device, *spec), pool
        dtype = torch.promote_types(skip_part.dtype, phases.dtype)
        out = interleave(phases, skip_part.shape, dtype, layout_of(skip_part), pool, delta)
        # one copy per phase, then a dense add: ~3x faster than one add over the strided view
        return out.add_(skip_part)

    @staticmethod
    def backward(ctx, grad):
        shape, stride, dtype, device, size, view_stride, offset = ctx.spec
        grad_phases = torch.empty_strided(shape, stride, dtype=dtype, device=device).zero_()
        grad_phases.as_strided(size, view_stride, offset).copy_(phase_split(grad, ctx.pool))
        return grad, grad_phases, None, None


def interleave(phases: torch.Tensor, shape, dtype: torch.dtype, layout: torch.memory_format, pool,
               delta) -> torch.Tensor:  # fmt: skip
    """The phase convolution's output at full resolution ``shape``, in ``dtype`` and ``layout``."""
    out = torch.empty(shape, dtype=dtype, device=phases.device, memory_format=layout)
    dst, src = phase_split(out, pool), phases.as_strided(*phase_view(phases, shape, pool, delta))
    for phase in itertools.product(*(range(p) for p in pool)):
        index = (slice(None), *itertools.chain.from_iterable((slice(None), a) for a in phase))
        dst[index].copy_(src[index])
    return out


def layout_of(t: torch.Tensor) -> torch.memory_format:
    """``t``'s memory layout: channels-last where it is stored so, else contiguous."""
    layout = torch.channels_last_3d if t.ndim == 5 else torch.channels_last
    return layout if t.ndim in (4, 5) and t.is_contiguous(memory_format=layout) else torch.contiguous_format


def phase_view(phases: torch.Tensor, out_shape, pool, delta) -> tuple:
    """``as_strided`` arguments that read ``phases`` as ``(N, M_1, p_1, ..., C)``."""
    n_out = out_shape[1]
    s_n, s_c, *s_space = phases.stride()
    size, stride = [out_shape[0]], [s_n]
    for i, (p, d, s) in enumerate(zip(pool, delta, s_space, strict=True)):
        s_phase = n_out * s_c * math.prod(pool[i + 1 :])
        size += [out_shape[2 + i] // p, p]
        stride += [s, s * d + s_phase]
    return (*size, n_out), (*stride, s_c), phases.storage_offset()


def upsample_concat_conv(h: torch.Tensor, skip: torch.Tensor | None, conv: nn.Module, pool, plans,
                         relu: bool = False) -> torch.Tensor:  # fmt: skip
    """``conv(cat([nearest_upsample(h, pool), skip]))`` (``conv(nearest_upsample(h, pool))`` without a
    skip), with the upsampled half run at low resolution; ``relu``: followed by a ReLU, fused with
    the skip half's convolution and the sum (inference on CPU, :mod:`carekit.nets.fused`)."""
    ndim, n_up = h.ndim - 2, h.shape[1]
    w = conv.weight
    with torch.autocast(h.device.type, enabled=False):
        kernel = w[:, :n_up]
        for taps, _, _ in plans:  # contract one original spatial axis per step
            kernel = torch.tensordot(kernel, torch.tensor(taps, dtype=w.dtype, device=w.device), dims=([2], [2]))
        # (O, I, p_1, T_1, ..., p_n, T_n) -> (p_1 ... p_n, O, I, T_1 ... T_n)
        order = [2 + 2 * i for i in range(ndim)] + [0, 1] + [3 + 2 * i for i in range(ndim)]
        kernel = kernel.permute(order).flatten(0, ndim)
    layout = layout_of(skip if skip is not None else h)
    kernel = kernel.contiguous(memory_format=layout)
    phases = CONV_F[ndim](h, kernel, padding=tuple(pad for _, pad, _ in plans))
    deltas = tuple(delta for _, _, delta in plans)
    if skip is None:  # the bias alone, at full resolution
        shape = (h.shape[0], w.shape[0], *(s * p for s, p in zip(h.shape[2:], pool, strict=True)))
        bias = conv.bias if conv.bias is not None else w.new_zeros(w.shape[0])
        skip_part = bias.to(phases.dtype).reshape(1, -1, *(1,) * ndim).expand(shape).contiguous(memory_format=layout)
    else:
        skip_w = w[:, n_up:].contiguous(memory_format=layout)
        if relu:
            shape = (skip.shape[0], w.shape[0], *skip.shape[2:])
            sum_up = interleave(phases, shape, phases.dtype, layout, pool, deltas)
            return fused.conv_relu(skip, conv, other=sum_up, weight=skip_w)
        skip_part = CONV_F[ndim](skip, skip_w, conv.bias, padding=conv.padding)
    out = PhaseAdd.apply(skip_part, phases, pool, deltas)
    return out.relu_() if relu else out


class UNet(nn.Module):
    """CARE U-Net for ``(N, C, Y, X)`` or ``(N, C, Z, Y, X)`` tensors.

    Parameters
    ----------
    ndim : int
        2 or 3 spatial dimensions.
    in_channels, out_channels : int
    depth : int
        Number of pooling steps.
    n_first : int
        Features of the first level; level ``l`` has ``n_first * 2**l``.
    kernel_size : int
        Convolution kernel edge (odd).
    n_conv : int
        Convolutions per level.
    residual : bool
        Add the input to the output (only when channel counts match).
    batch_norm : bool
        Batch normalisation after each convolution.
    pool : tuple of int, optional
        Pooling factor per spatial axis (default 2 everywhere; 1 leaves an axis unpooled).
    probabilistic : bool
        Add a Laplace scale head: the output is ``[mean, scale]`` along channels, with
        ``scale = softplus(.) + 1e-3`` from its own 1x1 convolution. The head reads the last
        feature maps without passing gradients back into them, so the scale cannot steer the
        features the mean is made of (with the beta-weighted NLL of ``carekit.losses`` the mean
        then trains exactly as a plain network's would).
    blur_pool : bool
        Pool by :func:`blur_pool` instead of max pooling (N2V2).
    top_skip : bool
        Keep the skip connection of the top level (N2V2 drops it: that level's features then come
        from the coarser levels only, so no single input pixel reaches the output unfiltered).
        Without it the top level upsamples linearly: nearest upsampling would leave a pattern of
        2-pixel blocks that no full-resolution feature is there to undo (a peak at Nyquist).
    filter_blend : dict, optional
        A fitted :class:`FilterBlend` (``sigma``, ``weight``, ``gain``, ``offset``) applied to the
        output; point networks with as many input as output channels only.
    """

    def __init__(self, ndim: int, in_channels: int, out_channels: int, *, depth: int = 2, n_first: int = 32,
                 kernel_size: int = 5, n_conv: int = 2, residual: bool = True, batch_norm: bool = False,
                 pool: tuple[int, ...] | None = None, probabilistic: bool = False, blur_pool: bool = False,
                 top_skip: bool = True, filter_blend: dict | None = None) -> None:  # fmt: skip
        super().__init__()
        if ndim not in CONV:
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        self.ndim, self.depth, self.n_conv, self.in_channels = ndim, depth, n_conv, in_channels
        self.kernel = (kernel_size,) * ndim
        self.pool = tuple(pool) if pool is not None else (2,) * ndim
        self.residual = residual and in_channels == out_channels
        self.blur_pool, self.top_skip = bool(blur_pool), bool(top_skip)
        if self.blur_pool and any(p not in (1, 2) for p in self.pool):
            raise ValueError(f"blur pooling pools by 2 (or 1), got {self.pool}")
        width = [n_first * 2**level for level in range(depth + 1)]

        def half(level: int) -> int:
            return width[max(level - 1, 0)]

        self.down = nn.ModuleList()
        cin = in_channels
        for level in range(depth):
            self.down.append(conv_block(ndim, [cin] + [width[level]] * n_conv, self.kernel, batch_norm))
            cin = width[level]
        self.bottom = conv_block(ndim, [cin] + [width[depth]] * (n_conv - 1) + [half(depth)], self.kernel, batch_norm)
        self.up = nn.ModuleList()
        for level in reversed(range(depth)):
            skip = width[level] if level > 0 or self.top_skip else 0
            widths = [half(level + 1) + skip] + [width[level]] * (n_conv - 1) + [half(level)]
            self.up.append(conv_block(ndim, widths, self.kernel, batch_norm))
        self.features = half(0)
        self.head = CONV[ndim](self.features, out_channels, 1)
        self.probabilistic = probabilistic
        self.scale_head = CONV[ndim](self.features, out_channels, 1) if probabilistic else None
        plans = [phase_taps(p, k) for p, k in zip(self.pool, self.kernel, strict=True)]
        self.phase_plans = None if None in plans else plans
        # False: the plain operators (upsample + concatenate, the pooling kernel), for tracing and export
        self.phase_upsampling = True
        self.out_channels = out_channels
        self.set_filter_blend(filter_blend)

    def set_filter_blend(self, settings: dict | None) -> None:
        """Apply a :class:`FilterBlend` of ``settings`` to the output from now on (None: none)."""
        if settings and (self.probabilistic or self.in_channels != self.out_channels):
            raise ValueError("a filter blend needs a point network with as many input as output channels")
        self.blend = blend_of(settings)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature maps, before the 1x1 output layer."""
        # a tracer (TorchScript, ONNX) records only part of the phase convolution's custom autograd
        # function, so traces take the plain operators: same weights, same outputs
        phase = self.phase_upsampling and not torch.jit.is_tracing()
        fuse = phase and fused.applies(x)  # prediction on CPU: convolutions fused with their ReLUs
        run = fused.run_block if fuse else lambda block, t: block(t)
        skips = []
        h = x
        for block in self.down:
            h = run(block, h)
            skips.append(h)
            if self.blur_pool:
                h = blur_pool(h, self.pool)
            else:
                h = max_pool(h, self.pool) if phase else POOL[self.ndim](h, self.pool)
        h = run(self.bottom, h)
        if not self.top_skip:
            skips[0] = None
        for block, skip in zip(self.up, reversed(skips), strict=True):
            if skip is None:  # the top level without its skip: linear upsampling (see the class)
                h = run(block, F.interpolate(h, scale_factor=self.pool, mode=LINEAR[self.ndim], align_corners=False))
            elif phase and self.phase_plans is not None:
                rest = fused.after_relu(block) if fuse else None  # the block after its first ReLU
                first = upsample_concat_conv(h, skip, block[0], self.pool, self.phase_plans, relu=rest is not None)
                h = run(block[1:] if rest is None else rest, first)
            else:
                h = F.interpolate(h, scale_factor=self.pool, mode="nearest")
                h = run(block, h if skip is None else torch.cat([h, skip], dim=1))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)
        out = self.head(features)
        if self.residual:
            out = out + x
        if self.blend is not None:
            out = self.blend(x, out)
        if self.scale_head is None:
            return out
        with torch.autocast(x.device.type, enabled=False):  # a fitted head may weigh features heavily: float32
            scale = F.softplus(self.scale_head(features.detach().float())) + SCALE_FLOOR
        return torch.cat([out.float(), scale], dim=1)

    def example_shape(self) -> tuple[int, ...]:
        """A small input, ``(1, C, 16, 64, 64)`` or ``(1, C, 64, 64)`` rounded to the pooling grid, to time."""
        edges = (16, 64, 64)[-self.ndim :]
        return (1, self.in_channels, *(-(-e // g) * g for e, g in zip(edges, self.divisor(), strict=True)))

    def divisor(self) -> tuple[int, ...]:
        """Spatial sizes must be multiples of this (the pooling grid)."""
        return tuple(p**self.depth for p in self.pool)

    def halo(self) -> tuple[int, ...]:
        """An upper bound of the receptive-field radius per axis, rounded up to the pooling grid.

        Tiles that overlap by this much reproduce an untiled prediction exactly.
        """
        halos = []
        blended = self.blend.radius() if self.blend is not None else (0,) * self.ndim
        for k, p, d, least in zip(self.kernel, self.pool, self.divisor(), blended, strict=True):
            radius, scale = 0, 1
            pooling = (p - 1) * (2 if self.blur_pool else 1)  # a blur pool reads one more pixel each side
            for _ in range(self.depth):
                radius += self.n_conv * (k // 2) * scale + scale * pooling
                scale *= p
            radius += self.n_conv * (k // 2) * scale
            for _ in range(self.depth):
                radius += scale * (p - 1)
                scale //= p
                radius += self.n_conv * (k // 2) * scale
            radius += 0 if self.top_skip else p  # linear upsampling reads one more coarse pixel
            radius = max(radius, least)  # the filter blend reads the input beside the network
            halos.append(-(-radius // d) * d)
        return tuple(halos)

    def bytes_per_voxel(self) -> int:
        """Peak memory per input voxel of a tiled prediction (float32 activations), for tile sizing.

        3.5 feature maps per level plus two float32 copies of the window: fitted to the peak
        resident memory of whole 2D 2048x2048 and 3D 64x256x256 windows (default networks,
        float32 and bfloat16), which it overestimates by 29 % (2D) and 5 % (3D).
        """
        per_level = sum(
            3.5 * self.features * 2**level / (2 ** (level * sum(p > 1 for p in self.pool)))
            for level in range(self.depth + 1)
        )
        return int(4 * (per_level + 2))


class ChannelwiseUNet(nn.Module):
    """One :class:`UNet` per channel, each restoring its channel alone (``channels -> channels``).

    For channels whose structures or noise differ (two fluorophores on two cameras). The output
    is every member's output along channels (means first, then Laplace scales if probabilistic).
    """

    def __init__(self, ndim: int, channels: int, filter_blend: dict | None = None, **settings) -> None:
        super().__init__()
        self.members = nn.ModuleList(UNet(ndim, 1, 1, **settings) for _ in range(channels))
        first = self.members[0]
        self.ndim, self.residual, self.probabilistic = ndim, first.residual, first.probabilistic
        self.in_channels = channels
        self.set_filter_blend(filter_blend)

    def set_filter_blend(self, settings: dict | None) -> None:
        """Each member blends its own channel's part of ``settings`` (see :class:`UNet`)."""
        for c, member in enumerate(self.members):
            own = {k: settings[k][c : c + 1] for k in BLEND_KEYS[1:]} if settings else None
            member.set_filter_blend({"sigma": settings["sigma"], **own} if own else None)

    @property
    def phase_upsampling(self) -> bool:
        return self.members[0].phase_upsampling

    @phase_upsampling.setter
    def phase_upsampling(self, value: bool) -> None:
        for member in self.members:
            member.phase_upsampling = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [member(x[:, c : c + 1]) for c, member in enumerate(self.members)]
        if not self.probabilistic:
            return torch.cat(outs, dim=1)
        return torch.cat([o[:, :1] for o in outs] + [o[:, 1:] for o in outs], dim=1)

    def example_shape(self) -> tuple[int, ...]:
        """A small input to time: a member's example with every channel."""
        return (1, self.in_channels, *self.members[0].example_shape()[2:])

    def divisor(self) -> tuple[int, ...]:
        return self.members[0].divisor()

    def halo(self) -> tuple[int, ...]:
        return self.members[0].halo()

    def bytes_per_voxel(self) -> int:
        """One member's activations (members run one after another) and the whole input and output."""
        return self.members[0].bytes_per_voxel() + 8 * len(self.members)


def build_unet(ndim: int, in_channels: int, out_channels: int, *, independent_channels: bool = False,
               **settings) -> UNet | ChannelwiseUNet:  # fmt: skip
    """A :class:`UNet`, or with ``independent_channels`` (and several channels in and out) a
    :class:`ChannelwiseUNet`."""
    if independent_channels and in_channels > 1:
        if in_channels != out_channels:
            raise ValueError(f"independent channels map each channel to itself, got {in_channels} -> {out_channels}")
        return ChannelwiseUNet(ndim, in_channels, **settings)
    return UNet(ndim, in_channels, out_channels, **settings)


def fold_batch_norm(net: nn.Module) -> nn.Module:
    """An inference copy of ``net`` with every batch norm folded into the convolution before it.

    Returns ``net`` itself when it has no batch norm. Outputs match the unfolded network in
    eval mode up to float rounding, one pass over memory per layer cheaper.
    """
    if not any(isinstance(m, tuple(NORM.values())) for m in net.modules()):
        return net
    net = copy.deepcopy(net).eval()
    for block in net.modules():
        if not isinstance(block, nn.Sequential):
            continue
        for i in range(len(block) - 1):
            if isinstance(block[i], tuple(CONV.values())) and isinstance(block[i + 1], tuple(NORM.values())):
                block[i] = fuse_conv_bn_eval(block[i], block[i + 1])
                block[i + 1] = nn.Identity()
    return net


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
