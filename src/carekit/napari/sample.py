"""Sample data: the shipped confocal stack of nuclei, and the two sets of data the demos make from it."""

from __future__ import annotations

from carekit.demo import ISO_FACTOR, PEAK_PHOTONS, make_anisotropic, make_data, sample_volume

SPACING = (0.29, 0.26, 0.26)  # µm per voxel along z, y, x (see samples/README.md)


def nuclei() -> list[tuple]:
    """The high-SNR stack, 60 x 192 x 192 (ZYX)."""
    return [(sample_volume(), {"name": "nuclei", "scale": SPACING, "metadata": {"axes": "ZYX"}}, "image")]


def nuclei_pair() -> list[tuple]:
    """Denoising pairs: 40 slices at a few photons per pixel and the same slices at high SNR."""
    truth, noisy = make_data()
    style = {"scale": SPACING, "metadata": {"axes": "ZYX"}}
    return [(noisy, {"name": f"nuclei low SNR ({PEAK_PHOTONS:g} photons)", **style}, "image"),
            (truth, {"name": "nuclei high SNR", **style, "visible": False}, "image")]  # fmt: skip


def nuclei_anisotropic() -> list[tuple]:
    """The stack blurred along z and with every fourth slice kept: an isotropic restoration's input."""
    z, y, x = SPACING
    coarse = make_anisotropic(sample_volume())
    keywords = {
        "name": f"nuclei, {ISO_FACTOR}x coarser z",
        "scale": (z * ISO_FACTOR, y, x),
        "metadata": {"axes": "ZYX"},
    }
    return [(coarse, keywords, "image")]
