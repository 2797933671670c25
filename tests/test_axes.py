import itertools

import numpy as np
import pytest

from carekit.axes import check_axes, from_net, to_net
from carekit.errors import CarekitError


@pytest.mark.parametrize("letters", ["YX", "CYX", "ZYX", "TZCYX", "SCZYX", "TYX"])
def test_every_permutation_round_trips(letters):
    rng = np.random.default_rng(0)
    sizes = {"S": 2, "T": 3, "C": 2, "Z": 4, "Y": 5, "X": 6}
    spatial = "ZYX" if "Z" in letters else "YX"
    for perm in itertools.permutations(letters):
        axes = "".join(perm)
        x = rng.random(tuple(sizes[a] for a in axes))
        net, layout = to_net(x, axes, spatial)
        assert net.shape[1:] == (sizes["C"] if "C" in axes else 1, *(sizes[a] for a in spatial))
        back, back_axes = from_net(net, layout)
        assert back_axes == axes
        np.testing.assert_array_equal(back, x)


def test_two_d_network_folds_z_into_samples():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # T Z Y X
    net, layout = to_net(x, "TZYX", "YX")
    assert net.shape == (6, 1, 4, 5)
    np.testing.assert_array_equal(net[4, 0], x[1, 1])
    np.testing.assert_array_equal(from_net(net, layout)[0], x)


def test_multichannel_output_adds_channel_axis_before_spatial():
    x = np.zeros((3, 5, 6))  # T Y X
    _, layout = to_net(x, "TYX", "YX")
    out, axes = from_net(np.zeros((3, 2, 5, 6)), layout)
    assert axes == "TCYX" and out.shape == (3, 2, 5, 6)


def test_projection_output_drops_z():
    x = np.zeros((4, 7, 5, 6))  # Z C Y X
    _, layout = to_net(x, "ZCYX", "ZYX")
    out, axes = from_net(np.zeros((1, 7, 5, 6)), layout, spatial="YX")
    assert axes == "CYX" and out.shape == (7, 5, 6)


@pytest.mark.parametrize(
    ("axes", "ndim", "message"),
    [
        ("YXQ", 3, "unknown letter"),
        ("YYX", 3, "repeat"),
        ("ZX", 2, "must contain Y and X"),
        ("ZYX", 2, "name 3 dimensions but the array has 2"),
        ("", 2, "missing"),
    ],
)
def test_bad_axes_are_explained(axes, ndim, message):
    with pytest.raises(CarekitError, match=message):
        check_axes(axes, ndim)


def test_network_axes_must_be_present():
    with pytest.raises(CarekitError, match="lack Z"):
        to_net(np.zeros((5, 6)), "YX", "ZYX")


def test_lower_case_is_accepted():
    assert check_axes("zyx", 3) == "ZYX"
