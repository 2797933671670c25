"""Robustness cases of 'carekit train': impossible settings, degenerate data, resumes that are not the
same run, and faults while it trains."""

from __future__ import annotations

import os
from functools import partial

import numpy as np
from harness import Case
from helpers import copy, disk_full, image, raising, returning, text, tif, train

T = partial(Case, command="train", kind="bad input")


def setting(name: str, *extra, match: str, expect: str = "error") -> Case:
    return T(name=name, make=lambda w, f: train(w, f, *extra), match=match, expect=expect)


def pairs(low_images, high_images):
    """Folders of pairs with the given images (same names)."""

    def make(w, f, *extra):
        for i, (lo, hi) in enumerate(zip(low_images(), high_images(), strict=True)):
            tif(f, f"low/p{i}.tif", lo)
            tif(f, f"high/p{i}.tif", hi)
        return train(w, f, *extra, low=[f / "low"], high=f / "high")

    return make


def noise(n=3, seed=0):
    return [image(seed + i, (64, 64)) for i in range(n)]


def zeros(n=3):
    return [np.zeros((64, 64), np.uint16) for _ in range(n)]


def some_zero():
    return [*noise(2), np.zeros((64, 64), np.float32)]


def resume_after(first, *second):
    """A short run with ``first`` extra flags, then ``--resume`` with ``second``."""

    def make(w, f):
        from carekit.cli import main

        assert main([str(a) for a in train(w, f, *first)]) == 0
        return train(w, f, "--resume", *second)

    return make


def other_data(w, f):
    from carekit.cli import main

    copy(w.low, f / "low")
    assert main([str(a) for a in train(w, f, low=[f / "low"])]) == 0
    tif(f, "low/img0.tif", image(9, (80, 80)))
    return train(w, f, "--resume", low=[f / "low"])


def damaged_checkpoint(w, f):
    argv = resume_after(())(w, f)
    text(f, "m/last.safetensors", os.urandom(300))
    return argv


def nan_loss(self, *batch):
    return float("nan")


SETTINGS = [
    setting("--seed -1", "--seed", "-1", match="seed"),
    setting("--seed 2^70", "--seed", str(2**70), match="seed"),
    setting("--patch-size 30,30 (not on the pooling grid)", "--patch-size", "30,30", match="pooling grid"),
    setting("--patch-size 0,0", "--patch-size", "0,0", match="patch size"),
    setting("--patch-size 32 (one axis)", "--patch-size", "32", match="patch size"),
    setting("--patch-size 32,32,32 for 2D", "--patch-size", "32,32,32", match="patch size"),
    setting("--patch-size larger than the images", "--patch-size", "128,128", match="smaller than the patch"),
    setting("--patch-size 10^6", "--patch-size", "1000000,1000000", match="patch size"),
    setting("--batch-size 0", "--batch-size", "0", match="batch size"),
    setting("--batch-size -4", "--batch-size", "-4", match="batch size"),
    setting("--batch-size 10^9", "--batch-size", "1000000000", match="batch size"),
    setting("--batch-size beyond memory", "--batch-size", "65536", "--patch-size", "64,64", match="GiB"),
    setting("--validation-patches 10^9", "--validation-patches", "1000000000", match="validation patches"),
    setting("--epochs 0", "--epochs", "0", match="epochs"),
    setting("--epochs -3", "--epochs", "-3", match="epochs"),
    setting("--steps-per-epoch 0", "--steps-per-epoch", "0", match="steps"),
    setting("--learning-rate 0", "--learning-rate", "0", match="learning rate"),
    setting("--learning-rate -1", "--learning-rate", "-1", match="learning rate"),
    setting("--learning-rate nan", "--learning-rate", "nan", match="finite"),
    setting("--learning-rate inf", "--learning-rate", "inf", match="finite"),
    setting("--lr-factor 2", "--lr-factor", "2", match="lr factor"),
    setting("--lr-patience -1", "--lr-patience", "-1", match="patience"),
    setting("--ema 1", "--ema", "1", match="ema"),
    setting("--validation-fraction 1", "--validation-fraction", "1", match="validation fraction"),
    setting("--background-threshold 1.5", "--background-threshold", "1.5", match="background"),
    setting("--kernel-size 4", "--kernel-size", "4", match="kernel size"),
    setting("--kernel-size 99", "--kernel-size", "99", match="kernel size"),
    setting("--depth 0", "--depth", "0", match="depth"),
    setting("--depth 9", "--depth", "9", match="depth"),
    setting("--n-first 0", "--n-first", "0", match="n_first"),
    setting("--n-first 10^6", "--n-first", "1000000", match="n_first"),
    setting("--n-conv 0", "--n-conv", "0", match="n_conv"),
    setting("--time-budget -5", "--time-budget", "-5", match="time-budget"),
    setting("--time-budget 0", "--time-budget", "0", match="time-budget"),
    setting("--time-budget nan", "--time-budget", "nan", match="time-budget"),
    setting("--ensemble 0", "--ensemble", "0", match="ensemble"),
    setting("--ensemble 1", "--ensemble", "1", match="ensemble"),
    setting("--ensemble -3", "--ensemble", "-3", match="ensemble"),
    setting("--ensemble 10^6", "--ensemble", "1000000", match="ensemble"),
    setting("--loss ssim", "--loss", "ssim", match="loss"),
    setting("--precision float16 on CPU", "--precision", "float16", "--device", "cpu", match="float16"),
    setting("--device tpu", "--device", "tpu", match="device"),
    setting("--mode unknown", "--mode", "sharpen", match="mode"),
    setting("a trained run", match="", expect="ok"),
]

DATA = [
    T(name="--low missing", make=lambda w, f: ["train", "--high", w.high, "--axes", "YX", "--model", f / "m"],
      match="needs --low"),
    T(name="--axes missing", make=lambda w, f: ["train", "--low", w.low, "--high", w.high, "--model", f / "m"],
      match="--axes"),
    T(name="--axes 3D for 2D images", make=lambda w, f: train(w, f, axes="ZYX"), match="axes 'ZYX'"),
    T(name="--low folder given twice", make=lambda w, f: train(w, f, low=[w.low, w.low]), match="twice"),
    T(name="--low folder given twice by two spellings",
      make=lambda w, f: train(w, f, low=[w.low, w.low / ".." / w.low.name]), match="twice"),
    T(name="--low and --high the same folder", make=lambda w, f: train(w, f, low=[w.high]), match="both"),
    T(name="--low a file inside a --low folder", make=lambda w, f: train(w, f, low=[w.low, w.low / "img0.tif"]),
      match="twice"),
    T(name="identical low and high images", make=lambda w, f: train(w, f, low=[copy(w.high, f / "copy")]),
      match="identical"),
    T(name="all-zero targets", make=pairs(noise, zeros), match="constant target"),
    T(name="all-zero inputs", make=pairs(zeros, noise), match="constant input"),
    T(name="one all-zero target", make=pairs(noise, some_zero), expect="warn", match="1 of 3 .*constant target"),
    T(name="one image pair identical", make=lambda w, f: pairs(lambda: noise(3), lambda: [*noise(2, 7), noise(3)[2]])(
        w, f), expect="warn", match="identical"),
    T(name="shapes differ", make=pairs(lambda: [image(0, (64, 64))], lambda: [image(0, (64, 60))]),
      match="differ"),
    T(name="target missing", make=lambda w, f: (copy(w.low, f / "l"), tif(f, "l/extra.tif", image()),
                                                train(w, f, low=[f / "l"]))[2], match="no target named extra.tif"),
    T(name="NaN in an input", make=pairs(lambda: [np.where(image() > 300, np.nan, image())], lambda: [image(3)]),
      match="NaN"),
    T(name="input near the float32 maximum", make=pairs(lambda: [image(1, (64, 64)) * 1e36], lambda: noise(1, 4)),
      match="float|diverged|NaN"),
    T(name="--low a text file", make=lambda w, f: train(w, f, low=[text(f, "l/img0.tif", "hi")], high=w.high),
      match="cannot read"),
    T(name="isotropic without --factor",
      make=lambda w, f: ["train", "--mode", "isotropic", "--input", w.image, "--axes", "YX", "--model", f / "m"],
      match="factor"),
    T(name="isotropic --factor 0.5", make=lambda w, f: ["train", "--mode", "isotropic", "--input",
                                                        tif(f, "s.tif", image(0, (6, 40, 40))), "--axes", "ZYX",
                                                        "--factor", "0.5", "--model", f / "m"], match="factor"),
    T(name="isotropic --psf-sigma with 3 numbers", make=lambda w, f: [
        "train", "--mode", "isotropic", "--input", tif(f, "s.tif", image(0, (6, 40, 40))), "--axes", "ZYX",
        "--factor", "2", "--psf-sigma", "1,2,3", "--model", f / "m"], match="psf-sigma"),
    T(name="isotropic NA above the medium's index", make=lambda w, f: [
        "train", "--mode", "isotropic", "--input", tif(f, "s.tif", image(0, (6, 40, 40))), "--axes", "ZYX",
        "--factor", "2", "--na", "1.6", "--wavelength", "500", "--pixel-size", "100", "--model", f / "m"],
      match="NA"),
    T(name="isotropic stack without Z", make=lambda w, f: ["train", "--mode", "isotropic", "--input", w.image,
                                                          "--axes", "YX", "--factor", "2", "--model", f / "m"],
      match="Z"),
    T(name="projection with 2D stacks", make=lambda w, f: ["train", "--mode", "projection", "--low", w.low,
                                                          "--high", w.high, "--axes", "YX", "--model", f / "m"],
      match="Z"),
    T(name="synthetic without a recipe", make=lambda w, f: ["train", "--mode", "synthetic", "--model", f / "m"],
      match="recipe"),
    T(name="synthetic recipe missing", make=lambda w, f: ["train", "--mode", "synthetic", "--recipe", f / "r.json",
                                                         "--model", f / "m"], match="no such recipe"),
]  # fmt: skip

FOLDERS = [
    T(name="model folder already trained", make=lambda w, f: train(w, f, model=copy(w.model, f / "m").name),
      match="already holds"),
    T(name="--model a file", make=lambda w, f: train(w, f, model=text(f, "m", "x").name), match="m"),
    T(name="--resume without a checkpoint", make=lambda w, f: train(w, f, "--resume"), match="no checkpoint"),
    T(name="--resume with a damaged checkpoint", make=damaged_checkpoint, match="checkpoint", changes=("m/*",)),
    T(name="--resume with a different learning rate", make=resume_after((), "--learning-rate", "0.01"),
      match="learning-rate"),
    T(name="--resume with another mode", make=lambda w, f: (resume_after(())(w, f), [
        "train", "--mode", "synthetic", "--recipe", w.recipe, "--model", f / "m", "--resume", "--quiet"])[1],
      match="--mode denoise"),
    T(name="--resume on other data", make=other_data, match="training data differ"),
    T(name="--resume, more epochs", make=resume_after((), "--epochs", "2"), expect="ok", changes=("m/*",)),
]  # fmt: skip

FAULTS = [
    T(name="loss becomes NaN", kind="fault", make=lambda w, f: train(w, f),
      fault=returning("carekit.trainer.Trainer.step", nan_loss), match="diverged"),
    T(name="learning rate 1e12", kind="fault", make=lambda w, f: train(w, f, "--learning-rate", "1e12", "--epochs",
                                                                       "3"), match="diverged", expect="error"),
    T(name="disk full saving weights", kind="fault", make=lambda w, f: train(w, f),
      fault=disk_full("carekit.model.save_file"), match="disk is full"),
    T(name="disk full saving the checkpoint", kind="fault", make=lambda w, f: train(w, f),
      fault=disk_full("carekit.trainer.save_file"), match="disk is full"),
    T(name="Ctrl-C while training", kind="fault", make=lambda w, f: train(w, f),
      fault=raising("carekit.trainer.Trainer.step", KeyboardInterrupt()), match="interrupted"),
    T(name="out of memory while training", kind="fault", make=lambda w, f: train(w, f),
      fault=raising("carekit.trainer.Trainer.step", MemoryError()), match="out of memory"),
]  # fmt: skip

CASES = SETTINGS + DATA + FOLDERS + FAULTS
