"""Slow robustness cases (run by ``benchmarks/robustness.py``, not by the test suite): real processes
killed with ``kill -9`` and SIGTERM, a real small filesystem that fills up, a zip holding a real
2 GiB member, an unreachable Dask scheduler."""

from __future__ import annotations

import contextlib
import hashlib
import json
import resource
import signal
import subprocess
import sys
import time
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import yaml
from harness import Case, partials
from helpers import image, predict, tif, train
from world import package_rdf

SLOW = partial(Case, slow=True)
RESUMED_TRAIN = ("--epochs", "4", "--steps-per-epoch", "6")


def cli(argv, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "carekit.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err, out


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.05)
    return False


def epochs_done(model: Path) -> int:
    history = model / "history.csv"
    return max(0, len(history.read_text().splitlines()) - 1) if history.exists() else 0


def checkpoint_content(path: Path) -> tuple[str, dict]:
    """A safetensors file's tensors (hashed bit for bit) and metadata, without the wall-clock seconds
    of the training history (the only thing two identical runs may differ in)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        digest = hashlib.sha1()
        for key in sorted(f.keys()):
            digest.update(key.encode() + f.get_tensor(key).numpy().tobytes())
        meta = dict(f.metadata() or {})
    if "state" in meta:
        state = json.loads(meta["state"])
        state["history"] = [{k: v for k, v in row.items() if k != "seconds"} for row in state.get("history", [])]
        meta["state"] = state
    return digest.hexdigest(), meta


def same_files(a: Path, b: Path, names) -> str:
    """'' where the files' tensors agree bit for bit and their metadata too (timings aside), else which differ."""
    differ = [n for n in names if checkpoint_content(a / n) != checkpoint_content(b / n)]
    return f"resumed run differs from an uninterrupted one in {', '.join(differ)}" if differ else ""


def killed_training(sig: int):
    """Train once without interruption, once killed by ``sig`` after its first epoch and resumed."""

    def run(world, folder, argv):
        reference = cli(train(world, folder, *RESUMED_TRAIN, model="ref"))
        code, err, _ = finish(reference)
        if code != 0:
            return code, err, "", "the uninterrupted run failed"
        proc = cli(argv)
        wait_for(lambda: epochs_done(folder / "m") >= 1, proc)
        proc.send_signal(sig)
        code, err, _ = finish(proc)
        if sig == signal.SIGTERM and code != 2:
            return code, err, "", f"SIGTERM: exit status {code}, not 2 with a line saying how to resume"
        code, err, out = finish(cli([*argv, "--resume"]))
        if code != 0:
            return code, err, out, "resume failed"
        return code, err, out, same_files(folder / "ref", folder / "m", ("weights.safetensors", "last.safetensors"))

    return run


def killed_restore(world, folder, argv):
    """Restore an OME-Zarr image once, and once killed with kill -9 after a few blocks and rerun."""
    big = tif(folder, "big.tif", np.tile(image(3, (64, 64)), (16, 16)), "YX")  # 1024 x 1024: many blocks
    ref = cli(predict(world, folder, "--memory", "0.02", source=big, output="ref.zarr"))
    code, err, _ = finish(ref)
    if code != 0:
        return code, err, "", "the uninterrupted run failed"
    proc = cli(predict(world, folder, "--memory", "0.02", source=big, output="out.zarr"))
    markers = folder / "out.zarr.partial" / "blocks"
    wait_for(lambda: markers.exists() and len(list(markers.glob("*.done"))) >= 2, proc)
    proc.kill()
    proc.wait()
    code, err, out = finish(cli(predict(world, folder, "--memory", "0.02", source=big, output="out.zarr")))
    if code != 0:
        return code, err, out, "rerun failed"
    import zarr

    a, b = (zarr.open_array(str(folder / n / "0"), mode="r")[...] for n in ("ref.zarr", "out.zarr"))
    return code, err, out, "" if np.array_equal(a, b) else "the rerun's result differs from an uninterrupted run"


def terminated_predict(world, folder, argv):
    for i in range(12):
        tif(folder, f"in/{i:02d}.tif", image(i, (384, 384)), "YX")
    proc = cli(predict(world, folder, source=folder / "in", output=folder / "out"))
    wait_for(lambda: (folder / "out").exists() and any((folder / "out").glob("*.tif")), proc)
    proc.send_signal(signal.SIGTERM)
    return (*finish(proc), "")


@contextlib.contextmanager
def small_filesystem(path: Path, size: str):
    """A tmpfs of ``size`` at ``path`` (root only); yields False where it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0  # fmt: skip
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], capture_output=True)


def limited(bytes_: int):
    """Where no filesystem can be mounted: every file this process writes is limited to ``bytes_``."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (bytes_, bytes_))


def full_disk(command: str):
    def run(world, folder, argv):
        disk = folder / "disk"
        size = 300_000 if command == "predict" else 40_000  # the result, or the first checkpoint, does not fit
        with small_filesystem(disk, str(size)) as mounted:
            argv = [disk / Path(a).name if str(a).startswith(str(folder / "target")) else a for a in argv]
            proc = cli(argv, preexec_fn=None if mounted else limited(size))
            code, err, out = finish(proc)
            left = partials(disk)
            problem = f"partial files on the full disk: {left}" if left else ""
            if command == "train" and code == 2 and not (disk / "m" / "config.json").exists():
                problem = problem or "the model folder lost its configuration"
        return code, err, out, problem

    return run


def huge_member(world, folder, argv):
    """A package whose listed weights are a real 2 GiB member (a few MB zipped); peak memory is measured."""
    with zipfile.ZipFile(world.package) as z:
        weights = z.read("weights.onnx")
    rdf = package_rdf({"onnx": weights})
    rdf["weights"]["onnx"] = {"source": "weights.onnx"}
    path = folder / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("rdf.yaml", yaml.safe_dump(rdf))
        with z.open("weights.onnx", "w", force_zip64=True) as f:
            block = bytes(2**24)
            for _ in range(128):
                f.write(block)
    rss = folder / "peak-kib"
    measure = ("import atexit, resource, sys\n"
               f"atexit.register(lambda: open({str(rss)!r}, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF)"
               ".ru_maxrss)))\nfrom carekit.cli import main\nsys.exit(main(sys.argv[1:]))\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", measure, *map(str, predict(world, folder, model=path))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    code, err, out = finish(proc)
    peak = int(rss.read_text()) / 2**20 if rss.exists() else 0.0  # GiB
    return code, err, out, f"peak memory {peak:.1f} GiB reading the package" if peak > 1.0 else ""


CASES = [
    SLOW(name="kill -9 mid-training, resumed: bit-identical", command="train", kind="fault", expect="ok",
         make=lambda w, f: train(w, f, *RESUMED_TRAIN), runner=killed_training(signal.SIGKILL)),
    SLOW(name="SIGTERM mid-training, resumed: bit-identical", command="train", kind="fault", expect="ok",
         make=lambda w, f: train(w, f, *RESUMED_TRAIN), runner=killed_training(signal.SIGTERM)),
    SLOW(name="kill -9 mid-restore, rerun: bit-identical", command="predict (zarr)", kind="fault", expect="ok",
         make=lambda w, f: [], runner=killed_restore),
    SLOW(name="SIGTERM while restoring a folder", command="predict", kind="fault", expect="interrupted",
         make=lambda w, f: [], runner=terminated_predict),
    SLOW(name="real full disk while predicting", command="predict", kind="fault", match="disk is full|cannot write",
         make=lambda w, f: predict(w, f, source=tif(f, "big.tif", image(0, (512, 512)), "YX"),
                                   output=f / "target" / "out.tif"), runner=full_disk("predict")),
    SLOW(name="real full disk while training", command="train", kind="fault", match="disk is full|cannot write",
         make=lambda w, f: train(w, f, model="target/m"), runner=full_disk("train")),
    SLOW(name="zip with a real 2 GiB member", command="predict", kind="hostile", match="GiB",
         make=lambda w, f: [], runner=huge_member),
    SLOW(name="Dask scheduler unreachable", command="predict (zarr)", kind="fault", match="Dask scheduler",
         make=lambda w, f: predict(w, f, "--dask", "tcp://127.0.0.1:9", source=w.zarr, output="o.zarr")),
]  # fmt: skip
