"""Property-based robustness of the loaders of files others write: config.json, rdf.yaml, recipes.

Hypothesis mutates valid files (values replaced by arbitrary JSON of any type and size, keys
deleted or added, the whole document replaced) and checks that each load either works or fails
with one :class:`CarekitError` line: never another exception, never a non-finite result.
Derandomized, so CI sees the same examples every run.
"""

import contextlib
import copy
import io
import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from world import Affine, onnx_bytes, package_rdf, write_package

from carekit.cli import main
from carekit.config import Config, NetConfig
from carekit.data.recipes import generate_pairs, parse_recipe
from carekit.errors import CarekitError
from carekit.model import CARE
from carekit.package import Package

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["YX", "ZYX", "denoise", "x", "y", "channel", "space", "batch", "onnx", "mae", "auto"]),
)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                      max_leaves=10)  # fmt: skip


def paths(node, prefix=()) -> list[tuple]:
    """Every place in a JSON document: the keys and indices that lead to it."""
    out = [prefix]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        out += paths(child, (*prefix, key))
    return out


@st.composite
def mutated(draw, base):
    """``base`` with one to three places replaced, deleted or given a new key; sometimes replaced whole."""
    if draw(st.integers(0, 9)) == 0:
        return draw(values)
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(doc)))
        if not where:
            continue
        parent = doc
        for key in where[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[where[-1]] = draw(values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[where[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=6))] = draw(values)
    return doc


def one_line_or_success(argv) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    lines = err.getvalue().strip().splitlines()
    assert code in (0, 2), (code, err.getvalue())
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("carekit: error: "), err.getvalue()


BASE_MODEL = CARE(Config(axes="YX", net=NetConfig(depth=1, n_first=4, kernel_size=3)))
BASE_CONFIG = BASE_MODEL.config.to_dict()


@SETTINGS
@given(mutated(BASE_CONFIG))
def test_any_config_json_loads_or_fails_in_one_line(config):
    with tempfile.TemporaryDirectory() as tmp:
        BASE_MODEL.save(tmp)
        text = json.dumps(config, allow_nan=True)
        (Path(tmp) / "config.json").write_text(text)
        one_line_or_success(["info", "--model", tmp])


BASE_WEIGHTS = onnx_bytes(Affine())
BASE_RDF = package_rdf({"onnx": BASE_WEIGHTS})
IMAGE = np.random.default_rng(0).gamma(2, 10, (24, 20)).astype(np.float32)


@SETTINGS
@given(mutated(BASE_RDF))
def test_any_rdf_yaml_runs_or_fails_in_one_line(rdf):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.zip"
        if isinstance(rdf, dict):
            write_package(path, rdf, {"weights.onnx": BASE_WEIGHTS})
        else:
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("rdf.yaml", json.dumps(rdf))
                z.writestr("weights.onnx", BASE_WEIGHTS)
        try:
            outputs, axes = Package(path).predict(IMAGE, "YX")
        except CarekitError as e:
            assert "\n" not in str(e)
            return
        assert all(np.isfinite(o).all() for o in outputs) and axes == "YX"


BASE_RECIPE = {"shape": [32, 32], "pairs": 2, "seed": 0, "imaging": {"photons": 50, "na": 1.2},
               "channels": [[{"type": "tubules", "density": 0.02}], [{"type": "granules", "radius": 2}]]}  # fmt: skip


@SETTINGS
@given(mutated(BASE_RECIPE))
def test_any_recipe_parses_and_generates_or_fails_in_one_line(recipe_dict):
    try:
        recipe = parse_recipe(recipe_dict, "r.json", base=Path(tempfile.gettempdir()))
        if np.prod(recipe.shape) <= 48**2:
            (pair,) = generate_pairs(recipe, 1, seed=0)
            assert np.isfinite(pair.low).all() and np.isfinite(pair.high).all()
    except CarekitError as e:
        assert "\n" not in str(e)
