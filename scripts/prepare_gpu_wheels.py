"""Prepare the wheels the bare GPU machine lacks, from pinned versions, and check them.

The GPU machine (Python 3.12, torch 2.11 with CUDA 13, accelerate, transformers, peft; no network) lacks
diffusers, DeepSpeed and OmegaConf, and some of their dependencies. This downloads their wheels for
CPython 3.12 on manylinux x86-64 (`pip download --only-binary=:all:`), builds DeepSpeed's wheel here (it
publishes none) with its CUDA ops left to JIT (`DS_BUILD_OPS=0`; the kit uses torch's AdamW, no op), and
checks that every wheel is pure Python or cp312 manylinux x86-64, one version per project, each requirement
met by another wheel or by the GPU machine's own packages, and that they install together into an empty
folder with `--no-index`.

    python scripts/prepare_gpu_wheels.py [--dest .whl] [--check-only]

The folder is ignored by git (.gitignore); the device tool's `carry` option takes it along, and
scripts/gpu_check.sh installs it there. The pins are the versions the CPU test suite runs with
(scripts/constraints.txt) and the versions pip resolved for them.
"""

from __future__ import annotations

import argparse
import email.parser
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[1]
DEST = REPO / ".whl"
MAX_TOTAL_MIB = 24  # the tree plus the wheels must travel within 64 MiB

# Downloaded as wheels (none of them is on the GPU machine, or its version there may be too old).
DOWNLOAD = [
    "diffusers==0.42.1",
    "importlib_metadata==10.2.0",  # diffusers
    "zipp==4.1.2",  # importlib_metadata
    "omegaconf==2.4.0",  # the trainer's config
    "hjson==3.1.0",  # DeepSpeed
    "pydantic==2.14.4",  # DeepSpeed's config
    "pydantic_core==2.50.5",  # the one binary wheel: cp312 manylinux
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",  # pydantic needs >= 4.16
]
BUILD = "deepspeed==0.19.8"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64",
             "manylinux1_x86_64"]  # fmt: skip
# pip's options that select wheels for the GPU machine's interpreter rather than this one.
TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
          *(arg for p in PLATFORMS for arg in ("--platform", p))]  # fmt: skip

# The GPU machine's packages (the device notes' list of its image, read 2026-11-17), normalised names.
GPU_MACHINE = set(
    """
accelerate anyio certifi charset-normalizer einops filelock fsspec h11 hf-xet httpcore httpx huggingface-hub idna
jinja2 markupsafe mpmath msgpack networkx ninja numpy nvidia-ml-py packaging peft pillow protobuf psutil py-cpuinfo
pyyaml regex requests safetensors sentencepiece setuptools sympy tokenizers torch tqdm transformers triton
typing-extensions urllib3 zipp tensorboard matplotlib imageio scipy
""".split()
)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_tags(filename: str) -> tuple[str, str, str, str]:
    """(project, python tag, abi tag, platform tag) of a wheel file name (PEP 427)."""
    parts = filename.removesuffix(".whl").split("-")
    if len(parts) not in (5, 6) or not filename.endswith(".whl"):
        raise ValueError(f"{filename} is not a wheel file name")
    return normalise(parts[0]), parts[-3], parts[-2], parts[-1]


def wheel_problem(filename: str) -> str | None:
    """Why this wheel cannot install on CPython 3.12 / manylinux x86-64, or None if it can."""
    _, python, abi, platform = wheel_tags(filename)
    if platform == "any":
        return None if abi == "none" and any(t in ("py3", "py312", "cp312") for t in python.split(".")) else (
            f"{filename}: a pure wheel must be py3/none/any")  # fmt: skip
    if "cp312" not in python.split(".") or abi not in ("cp312", "abi3"):
        return f"{filename}: built for {python}/{abi}, not CPython 3.12"
    if not all(p.startswith("manylinux") and p.endswith("x86_64") for p in platform.split(".")):
        return f"{filename}: platform {platform} is not manylinux x86-64"
    return None


def requirements(path: pathlib.Path) -> list[str]:
    """The project names a wheel requires (Requires-Dist without extras or markers that exclude 3.12)."""
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    names = []
    for line in metadata.get_all("Requires-Dist") or []:
        requirement, _, marker = line.partition(";")
        if "extra" in marker or 'python_version < "3.1' in marker or "python_version < '3.1" in marker:
            continue
        names.append(normalise(re.split(r"[\s<>=!~\[(]", requirement.strip(), maxsplit=1)[0]))
    return names


def check(dest: pathlib.Path) -> list[str]:
    """Every problem with the wheels in `dest` (empty: ready to carry)."""
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        return [f"no wheels in {dest}; run python scripts/prepare_gpu_wheels.py"]
    problems = [p for p in (wheel_problem(w.name) for w in wheels) if p]
    projects = [wheel_tags(w.name)[0] for w in wheels]
    problems += [f"two versions of {p}" for p in sorted({p for p in projects if projects.count(p) > 1})]
    wanted = {normalise(re.split("==", r)[0]) for r in [*DOWNLOAD, BUILD]}
    problems += [f"no wheel for {p}" for p in sorted(wanted - set(projects))]
    available = set(projects) | GPU_MACHINE
    for wheel in wheels:
        missing = sorted(set(requirements(wheel)) - available)
        if missing:
            problems.append(f"{wheel.name} needs {missing}: neither a wheel here nor on the GPU machine")
    total = sum(w.stat().st_size for w in wheels) / 2**20
    if total > MAX_TOTAL_MIB:
        problems.append(f"the wheels take {total:.1f} MiB, more than {MAX_TOTAL_MIB} MiB")
    return problems


def install_check(dest: pathlib.Path) -> None:
    """Install every wheel into an empty folder offline, as the GPU machine will (raises on failure)."""
    with tempfile.TemporaryDirectory() as target:
        # As for CPython 3.12 on manylinux x86-64, whatever Python runs this script.
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   "--target", target, *TARGET, *map(str, sorted(dest.glob("*.whl")))]  # fmt: skip
        subprocess.run(command, check=True)
        for module in ("diffusers", "deepspeed", "omegaconf", "pydantic_core"):
            if not (pathlib.Path(target) / module).is_dir():
                raise RuntimeError(f"{module} did not install into {target}")


def prepare(dest: pathlib.Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "download", "--no-deps", *TARGET, "-d", str(dest), *DOWNLOAD], check=True)
    if not list(dest.glob("deepspeed-*.whl")):
        # No build isolation: setup.py imports torch, and an isolated build would download a CUDA torch.
        env = {**os.environ, "DS_BUILD_OPS": "0"}
        command = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-w", str(dest), BUILD]
        subprocess.run(command, check=True, env=env)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dest", type=pathlib.Path, default=DEST, help=f"wheel folder (default {DEST})")
    parser.add_argument("--check-only", action="store_true", help="check the folder, download nothing")
    args = parser.parse_args(argv)
    if not args.check_only:
        prepare(args.dest)
    problems = check(args.dest)
    if not problems:
        install_check(args.dest)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    total = sum(w.stat().st_size for w in args.dest.glob("*.whl")) / 2**20
    print(f"{len(list(args.dest.glob('*.whl')))} wheels, {total:.1f} MiB in {args.dest}: "
          f"{'NOT ready' if problems else 'ready to carry'}")  # fmt: skip
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
