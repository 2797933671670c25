"""Training from a recipe: no data on disk, pairs generated when training starts.

The recipe (structures per channel, the simulated microscope and the number of pairs, see
:mod:`carekit.data.recipes`) is stored in the model's configuration; the network learns to undo
the microscope and predicts like a denoising model. The generated truths are in the input's units
(camera counts before the blur), and training scales each target by its input's percentile span
rather than by its own percentiles, which depend on how sparse its image is and gave the same
structure target scales several times apart from pair to pair. Training fine-tunes the shipped
network pre-trained on widefield images of random recipes (``synthetic-2d*``, see
:mod:`carekit.pretrained`) where the network matches it, else starts from scratch. The loss is
the mean squared error (``--loss`` overrides it): below the PSF's width the widths and exact
positions of structures are uncertain, and the mean of what the image leaves open scores better
against structures drawn by other generators than the median that MAE learns.
"""

from __future__ import annotations

from pathlib import Path

from carekit.config import Config
from carekit.data.recipes import Recipe, generate_pairs, load_recipe, parse_recipe
from carekit.errors import CarekitError
from carekit.model import CARE
from carekit.modes.denoise import DENOISE
from carekit.registry import Mode, Option, TrainingData, register
from carekit.training import train_mode


def synthetic_data(inputs: dict, saved: Config | None, settings: dict) -> TrainingData:
    recipe = inputs.get("recipe")
    if saved is not None:
        recipe = parse_recipe(saved.synthetic, "the model's recipe", saved=True)
    elif recipe is None:
        raise CarekitError("synthetic training needs --recipe RECIPE.json")
    elif isinstance(recipe, dict):
        recipe = parse_recipe(recipe)
    elif not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    pairs = generate_pairs(recipe, recipe.pairs, recipe.seed, settings.get("progress", False))
    return TrainingData(pairs, recipe.axes, part=recipe.to_dict())


SYNTHETIC = register(
    Mode(
        name="synthetic",
        summary="widefield images of generated structures (a recipe) to the structures",
        inputs=("recipe",),
        data=synthetic_data,
        model=CARE,
        part="synthetic",
        options=(Option("--recipe", "structures, microscope and number of pairs", {"metavar": "RECIPE.json"}),),
        supports=DENOISE.supports - {"filter_blend"},  # its input is a blurred image, not its target plus noise
        sampler_options={"input_units": True},  # generated truths are in the input's counts
        train_defaults={"loss": "mse"},  # the mean of what a blurred image leaves open (see the module)
        warm_start="synthetic",
    )
)


def train_synthetic(recipe: Recipe | str | Path, model_dir: str | Path, **options) -> CARE:
    """Train on ``recipe.pairs`` generated pairs (the recipe is stored in the model's configuration);
    ``options`` as for :func:`carekit.train`."""
    return train_mode(SYNTHETIC, model_dir, {"recipe": recipe}, **options)
