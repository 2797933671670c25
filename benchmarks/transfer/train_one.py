"""Train one model for a transfer benchmark, timed (run by ``common.timed_training`` under the CPU lock).

    python train_one.py SPEC.json

The spec names the mode (``synthetic``: a recipe; ``projection``: stacks and targets in an
``.npz``), the model folder and the training keywords. Writes ``timing.json`` into the model
folder: the wall-clock seconds of the whole training call (data generation included).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from carekit.data.recipes import parse_recipe
from carekit.engine import cpu_precision
from carekit.modes.projection import train_projection
from carekit.modes.synthetic import train_synthetic


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    folder, settings = Path(spec["model"]), spec["settings"]
    start = time.monotonic()
    if spec["mode"] == "synthetic":
        train_synthetic(parse_recipe(spec["recipe"]), folder, progress=False, **settings)
    else:
        data = np.load(spec["data"])
        stacks = [data[k] for k in sorted(data.files) if k.startswith("stack")]
        truths = [data[k] for k in sorted(data.files) if k.startswith("truth")]
        train_projection(stacks, truths, "ZYX", folder, progress=False, **settings)
    wall = time.monotonic() - start
    precision = settings.get("precision", "auto")
    precision = cpu_precision(None)[0] if precision == "auto" else precision
    (folder / "timing.json").write_text(json.dumps({"wall_s": wall, "precision": precision}))


if __name__ == "__main__":
    main(sys.argv[1])
