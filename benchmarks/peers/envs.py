"""The peers' virtual environments: created on demand, outside carekit's own dependencies.

Each peer gets its own venv under ``--venvs`` (default ``benchmarks/peers/.venvs/``), built only
when missing. The pins below are the versions that install on a CPU-only Python 3.11 machine:

- CSBDeep: ``tensorflow-cpu`` + ``csbdeep`` (Keras 3 comes with TensorFlow).
- CAREamics: its metadata caps ``torchvision<=0.26``, whose wheels require ``torch==2.11``
  (a multi-GB CUDA build). We pin ``torch==2.13.0`` (the CPU wheel, as carekit uses) with the
  matching ``torchvision``, install CAREamics itself without dependencies, then the rest of its
  requirements (pip then reports the broken cap: expected). PyPI's torchvision is built for the
  CUDA torch, so its compiled ops do not load here; ``worker_careamics.py`` makes its import work
  (CAREamics' CARE path never calls a torchvision op).
"""

from __future__ import annotations

import subprocess
import sys
import venv
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_VENVS = HERE / ".venvs"
CAREKIT_PYTHON = HERE.parents[1] / ".venv" / "bin" / "python"

CSBDEEP_PINS = ["tensorflow-cpu==2.21.0", "csbdeep==0.8.2"]
TORCH_PINS = ["torch==2.13.0", "torchvision==0.28.0"]
CAREAMICS_PIN = "careamics==0.3.5"
SKIPPED_REQUIREMENTS = ("torch", "torchvision")  # pinned above instead

# Prints CAREamics' own requirements (extras and the torch pair left out), one a line.
LIST_REQUIREMENTS = """
import importlib.metadata as m, re
for r in m.requires("careamics") or []:
    name = re.split(r"[<>=!~ ;\\[]", r, maxsplit=1)[0].lower()
    if "extra ==" not in r and name not in {skipped}:
        print(r.split(";")[0].strip())
"""


@dataclass
class PeerEnv:
    """One peer's venv: where it lives and the pip steps that fill it."""

    name: str
    root: Path
    steps: list[list[str]] = field(default_factory=list)

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def exists(self) -> bool:
        return self.python.exists() and (self.root / ".complete").exists()


def peer_envs(venvs: Path) -> dict[str, PeerEnv]:
    """The peers' environments under ``venvs``."""
    return {
        "csbdeep": PeerEnv("csbdeep", venvs / "csbdeep", [CSBDEEP_PINS]),
        "careamics": PeerEnv("careamics", venvs / "careamics", [TORCH_PINS, ["--no-deps", CAREAMICS_PIN]]),
    }


def pip(python: Path, args: list[str]) -> None:
    """``python -m pip install ARGS``, echoed and checked."""
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("  $ " + " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def careamics_requirements(python: Path) -> list[str]:
    """CAREamics' requirements as its metadata lists them, without extras and the torch pair."""
    code = LIST_REQUIREMENTS.format(skipped=repr(set(SKIPPED_REQUIREMENTS)))
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line]


def create(env: PeerEnv) -> None:
    """Build ``env`` from scratch: the venv, then its pip steps."""
    print(f"creating the {env.name} environment in {env.root}", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(env.root)
    for step in env.steps:
        pip(env.python, step)
    if env.name == "careamics":  # the rest of its requirements, with torch held at the pin
        pip(env.python, [*careamics_requirements(env.python), *TORCH_PINS])
    (env.root / ".complete").write_text("\n".join(" ".join(s) for s in env.steps) + "\n")


def ensure(names: list[str], venvs: Path = DEFAULT_VENVS) -> dict[str, Path]:
    """The python of each named tool, creating the peers' venvs that are missing."""
    pythons = {}
    envs = peer_envs(venvs)
    for name in names:
        if name == "carekit":
            pythons[name] = CAREKIT_PYTHON if CAREKIT_PYTHON.exists() else Path(sys.executable)
            continue
        env = envs[name]
        if env.exists():
            print(f"using the {name} environment in {env.root}", flush=True)
        else:
            create(env)
        pythons[name] = env.python
    return pythons


if __name__ == "__main__":
    ensure(sys.argv[1:] or ["csbdeep", "careamics"])
