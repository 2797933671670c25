"""Does carekit beat the best simple filter on data it was not tuned on? Per dataset, worst case shown.

    python benchmarks/quality/run.py --variants default --photons 20 --budget 120
    python benchmarks/quality/run.py --variants default,scratch --photons 5,20,100 --budget 60 --name sweep
    python benchmarks/quality/run.py --datasets confocal-nuclei-3d,granules-3d --budget 240
    python benchmarks/quality/run.py --lodo benchmarks/results/quality-sweep.json

Every dataset of ``truths.py`` (real images and structures drawn for evaluation only) is degraded
by a Poisson-Gaussian camera at each photon level (read noise ``--read-noise``); carekit trains on
the training truths' pairs for ``--budget`` seconds with the variant's settings and restores the
test images. The baselines are a Gaussian filter and non-local means, each with the parameters
that score best against the truth (an upper bound for them, cached per dataset and noise). Scores
are the paper's (``carekit.metrics.evaluate``), averaged over 2D planes.

``--clock steps`` (the default) runs every training on a virtual clock: each optimizer step costs
``1 / rate`` seconds, where ``rate`` is the steps per second of the variant's network and batch on
this CPU, measured once in a real 20-second run (with the CPU lock held) and cached; validation
is not charged. Results then depend on the budget, not on what else the machine is doing, and are
reproducible to the step. ``--clock wall`` trains on real time.

``--lodo`` reads result files and chooses a variant for each dataset from the *other* datasets
(highest mean margin over the best classical filter), then shows how that choice does on the
dataset it was not chosen on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).parents[1]))
import truths
import variants
from cpulock import cpu_lock, pausable

import carekit
import carekit.trainer
from carekit.baselines import mean_psnr, tuned_nlm
from carekit.data.camera import poisson_gaussian, to_photons

RESULTS = Path(__file__).resolve().parents[1] / "results"
CACHE = RESULTS / "quality-baselines.json"
RATES = RESULTS / "quality-rates.json"
GAUSS_SIGMAS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
CALIBRATION_SECONDS = 20.0


def cpuinfo() -> dict[str, str]:
    """The first value of each field of ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_name() -> str:
    return cpuinfo().get("model name") or platform.processor() or "unknown CPU"


def cpu_generation() -> str:
    """x86's CPU family and model numbers ("23/1" is a first EPYC), or "?" where the OS does not say."""
    fields = cpuinfo()
    return f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


# -- data -------------------------------------------------------------------------------------
def degrade(images: list[np.ndarray], photons: float, read: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [poisson_gaussian(to_photons(t, photons), rng, read_sigma=read) for t in images]


def stack(images: list[np.ndarray]) -> np.ndarray:
    return np.stack(images).astype(np.float32)


# -- baselines -----------------------------------------------------------------------------------
def best_gaussian(noisy: np.ndarray, truth: np.ndarray) -> tuple[float, dict]:
    from scipy.ndimage import gaussian_filter

    best = (-np.inf, {})
    spatial = noisy.ndim - 1
    for s in GAUSS_SIGMAS:
        for sz in (s, s / 2) if spatial == 3 else (None,):
            sigma = (0,) + ((sz, s, s) if spatial == 3 else (s, s))
            score = mean_psnr(gaussian_filter(noisy, sigma), truth)
            if score > best[0]:
                best = (score, {"sigma": s, **({"sigma_z": sz} if sz is not None else {})})
    return best


def baselines(name: str, noisy: np.ndarray, truth: np.ndarray, photons: float, read: float, seed: int) -> dict:
    """Input, best Gaussian and best NLM PSNR against the truth (cached)."""
    cache = read_json(CACHE)
    key = f"{name}|{photons:g}|{read:g}|{seed}"
    if key not in cache:
        g_score, g_params = best_gaussian(noisy, truth)
        nlm_out, nlm_params = tuned_nlm(noisy, truth)
        cache = read_json(CACHE)
        cache[key] = {
            "input": mean_psnr(noisy, truth),
            "gaussian": {"psnr": g_score, **g_params},
            "nlm": {"psnr": mean_psnr(nlm_out, truth), **nlm_params},
        }
        write_json(CACHE, cache)
    entry = cache[key]
    entry["best_classical"] = max(entry["gaussian"]["psnr"], entry["nlm"]["psnr"])
    return entry


# -- the virtual clock -----------------------------------------------------------------------------
class StepClock:
    """A clock that advances ``1 / rate`` seconds per optimizer step (and not otherwise)."""

    def __init__(self, rate: float) -> None:
        self.per_step, self.now = 1.0 / rate, 0.0

    def monotonic(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.per_step


class Ticks(carekit.trainer.Callback):
    """Advances a :class:`StepClock` after every optimizer step."""

    def __init__(self, clock: StepClock) -> None:
        self.clock = clock

    def on_step(self, trainer, step: int, loss: float) -> None:
        self.clock.tick()


@contextlib.contextmanager
def virtual_time(rate: float):
    """Run carekit's trainer on a :class:`StepClock`: the time budget becomes a step budget.

    Yields the callbacks to train with."""
    clock = StepClock(rate)
    original = carekit.trainer.time

    carekit.trainer.time = types.SimpleNamespace(**{**vars(time), "monotonic": clock.monotonic})
    try:
        yield [Ticks(clock)]
    finally:
        carekit.trainer.time = original


def fit(pairs, axes: str, settings: dict, budget: float, folder: Path, callbacks=()) -> tuple:
    start = time.monotonic()
    model = carekit.train(pairs[0], pairs[1], axes, folder, time_budget=budget, progress=False, callbacks=callbacks,
                          **settings)  # fmt: skip
    history = (folder / "history.csv").read_text().splitlines()[1:]
    steps = sum(int(row.split(",")[1]) for row in history)
    return model, steps, time.monotonic() - start


SPEED_FIELDS = ("depth", "n_first", "kernel_size", "n_conv", "batch_norm", "batch_size", "patch_size", "precision")


def speed_key(settings: dict, ndim: int) -> str:
    """What sets the cost of a training step: the network, the batch and the precision (not the data,
    the schedule or how often validation runs)."""
    from carekit.config import Config
    from carekit.training import make_config

    config = make_config("ZYX" if ndim == 3 else "YX", (1, 1), {k: v for k, v in settings.items() if k != "init"})
    config = Config.from_dict(config.to_dict())
    merged = {**vars(config.net), **vars(config.train)}
    return json.dumps({k: merged[k] for k in SPEED_FIELDS}, sort_keys=True, default=list)


def machine_key() -> str:
    """The CPU as far as training speed goes: its name and generation (a name can cover CPUs of very
    different speed: "AMD EPYC" from 1.5 to 9.6 steps per second), the widest vector unit PyTorch
    uses and the precision carekit picks on it."""
    from carekit.engine import cpu_precision

    capability, precision = torch.backends.cpu.get_cpu_capability(), cpu_precision(None)[0]
    return f"{cpu_name()}|{cpu_generation()}|{capability}|{precision}"


def rate_of(settings: dict, ds: truths.Dataset, pairs, axes: str) -> float:
    """Optimizer steps per second of this network and batch on this CPU, measured once in a real
    20-second training run with the CPU lock held, and cached. Every variant with the same network and
    batch gets the same rate, so equal budgets mean equal optimizer steps."""
    key = f"{machine_key()}|{torch.__version__}|{ds.ndim}D|{speed_key(settings, ds.ndim)}"
    rates = read_json(RATES)
    if key not in rates:
        with cpu_lock(exclusive=True), tempfile.TemporaryDirectory() as d:
            _, steps, _ = fit(pairs, axes, settings, CALIBRATION_SECONDS, Path(d) / "m")
        rates = read_json(RATES)
        rates[key] = steps / CALIBRATION_SECONDS
        write_json(RATES, rates)
    return rates[key]


# -- one run -------------------------------------------------------------------------------------
def run_one(ds: truths.Dataset, variant: str, photons: float, a) -> dict:
    axes = "ZYX" if ds.ndim == 3 else "YX"
    settings = variants.settings(variant, a.precision)
    train_low = degrade(ds.train, photons, a.read_noise, a.seed)
    test_low = degrade(ds.test, photons, a.read_noise, a.seed + 1000)
    truth = stack(ds.test)
    base = baselines(ds.name, stack(test_low), truth, photons, a.read_noise, a.seed)
    pairs = (train_low, [t.astype(np.float32) for t in ds.train])
    rate = rate_of(settings, ds, pairs, axes) if a.clock == "steps" else None
    with tempfile.TemporaryDirectory() as d, cpu_lock(exclusive=True) if rate is None else pausable():
        if rate is not None:
            with virtual_time(rate) as ticks:
                model, steps, seconds = fit(pairs, axes, settings, a.budget, Path(d) / "m", ticks)
        else:
            model, steps, seconds = fit(pairs, axes, settings, a.budget, Path(d) / "m")
        restored = stack([model.predict(x, axes) for x in test_low])
        summary = model.summary()
        mix = without_blend(model, test_low, axes, truth)
    care = mean_psnr(restored, truth)
    return {
        "dataset": ds.name,
        "kind": ds.kind,
        "ndim": ds.ndim,
        "variant": variant,
        "photons": photons,
        "read_noise": a.read_noise,
        "seed": a.seed,
        "budget_s": a.budget,
        "clock": a.clock,
        "rate_steps_per_s": rate,
        "steps": steps,
        "wall_s": round(seconds, 1),
        "input": base["input"],
        "gaussian": base["gaussian"],
        "nlm": base["nlm"],
        "best_classical": base["best_classical"],
        "care": care,
        "margin_db": care - base["best_classical"],
        "network": summary,
        **mix,
    }


def without_blend(model, images: list[np.ndarray], axes: str, truth: np.ndarray) -> dict:
    """Where training kept a filter blend (``carekit.filterblend``): the test PSNR with and without it,
    both predicted in float32 by the same network (the int8 copy holds the blend)."""
    if not model.config.blend:
        return {"blend": None}
    mixed = mean_psnr(stack([model.predict(x, axes, precision="float32") for x in images]), truth)
    model.net.set_filter_blend(None)
    model.weights_changed()
    alone = mean_psnr(stack([model.predict(x, axes, precision="float32") for x in images]), truth)
    return {"blend": model.config.blend, "care_float32_blended": mixed, "care_float32_alone": alone}


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | photons | variant | input | Gaussian | NLM | CARE | margin over best classical | steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['photons']:g} | {r['variant']} | {r['input']:.2f} | {r['gaussian']['psnr']:.2f} | "
            f"{r['nlm']['psnr']:.2f} | {r['care']:.2f} | {r['margin_db']:+.2f} | {r['steps']} |"
        )
    for (photons, variant), group in sorted(grouped(rows).items()):
        worst = min(group, key=lambda r: r["margin_db"])
        mean = np.mean([r["margin_db"] for r in group])
        lines.append(f"| **worst of {len(group)}** ({worst['dataset']}) | {photons:g} | {variant} | | | | | "
                     f"**{worst['margin_db']:+.2f}** (mean {mean:+.2f}) | |")  # fmt: skip
    return "\n".join(lines)


def grouped(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault((r["photons"], r["variant"]), []).append(r)
    return out


def lodo(paths: list[str]) -> str:
    """Leave-one-dataset-out choice of variant, per photon level."""
    rows = [r for p in paths for r in json.loads(Path(p).read_text())["rows"]]
    lines = ["| held-out dataset | photons | variant chosen on the others | its margin there | best variant there |",
             "|---|---|---|---|---|"]  # fmt: skip
    by = {}
    for r in rows:
        by.setdefault(r["photons"], {}).setdefault(r["variant"], {})[r["dataset"]] = r["margin_db"]
    for photons, table_ in sorted(by.items()):
        datasets = sorted(set.intersection(*(set(v) for v in table_.values())))
        for held in datasets:
            others = [d for d in datasets if d != held]
            chosen = max(table_, key=lambda v: np.mean([table_[v][d] for d in others]))
            best = max(table_, key=lambda v: table_[v][held])
            lines.append(f"| {held} | {photons:g} | {chosen} | {table_[chosen][held]:+.2f} | "
                         f"{best} ({table_[best][held]:+.2f}) |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="2d", help="comma-separated names, '2d', '3d' or 'all'")
    ap.add_argument("--variants", default="default")
    ap.add_argument("--photons", default="20")
    ap.add_argument("--read-noise", type=float, default=2.0)
    ap.add_argument("--budget", type=float, default=120.0, help="training seconds")
    ap.add_argument("--clock", choices=["steps", "wall"], default="steps")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=truths.DATA)
    ap.add_argument("--name", default=None)
    ap.add_argument("--lodo", nargs="+", metavar="RESULTS.json")
    ap.add_argument("--baselines-only", action="store_true", help="only compute (and cache) the baselines")
    a = ap.parse_args(argv)
    if a.lodo:
        print(lodo(a.lodo))
        return
    names = {"2d": truths.DATASETS_2D, "3d": [k for k in truths.DATASETS if k.endswith("-3d")],
             "all": list(truths.DATASETS)}.get(a.datasets, a.datasets.split(","))  # fmt: skip
    name = a.name or f"{a.variants.replace(',', '+')}-{a.budget:g}s"
    out = RESULTS / f"quality-{name}.json"
    done = read_json(out).get("rows", [])
    rows = list(done)
    meta = {"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "args": {**vars(a), "data": str(a.data)}}  # fmt: skip
    for photons in [float(p) for p in a.photons.split(",")]:
        for ds_name in names:
            ds = truths.load(ds_name, a.data)
            if a.baselines_only:
                test_low = degrade(ds.test, photons, a.read_noise, a.seed + 1000)
                with pausable():
                    base = baselines(ds.name, stack(test_low), stack(ds.test), photons, a.read_noise, a.seed)
                print(ds_name, photons, {k: base[k] for k in ("input", "best_classical")}, flush=True)
                continue
            for variant in a.variants.split(","):
                if any(r["dataset"] == ds_name and r["variant"] == variant and r["photons"] == photons for r in done):
                    continue
                row = run_one(ds, variant, photons, a)
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("dataset", "photons", "variant", "care", "best_classical",
                                                      "margin_db", "steps")}), flush=True)  # fmt: skip
                write_json(out, {**meta, "rows": rows})
    print(table(rows))


if __name__ == "__main__":
    main()
