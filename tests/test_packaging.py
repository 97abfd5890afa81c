"""The wheel carries the runtimes and search spaces: a non-editable install finds them without the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "tuner", "runtimes", "search_spaces")

# Run inside the unpacked wheel: where tuner, its data folders and .envs/ are, and what loads from there.
PROBE = """
import json
import tuner
from tuner import runtime, space
print(json.dumps({
    "tuner": tuner.__file__,
    "runtimes_dir": str(runtime.RUNTIMES_DIR),
    "spaces_dir": str(space.SPACES_DIR),
    "envs_dir": str(runtime.envs_dir()),
    "names": runtime.names(),
    "runtime_paths": [str(runtime.load(name).path) for name in runtime.names()],
    "runtime_spaces": [space.load(runtime.load(name).space, 4).name for name in runtime.names()],
    "tensorflow_space": str(space.load("tensorflow", 4).path),
    "space_by_path": space.load(str(space.SPACES_DIR / "tensorflow-eigen.toml"), 4).name,
}))
"""


@pytest.mark.timeout(30)
def test_wheel_ships_runtimes_and_search_spaces(tmp_path: Path) -> None:
    # Build from a copy, so the build/ and egg-info folders setuptools writes stay out of the shared checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPOSITORY / name).is_dir():
            shutil.copytree(REPOSITORY / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPOSITORY / name, source / name)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    subprocess.run([*build, "-w", str(wheels), str(source)], check=True, capture_output=True)
    (wheel,) = wheels.glob("tuner-*.whl")
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
    # The unpacked wheel comes first on sys.path; the working directory is neither the repository nor its copy.
    work = tmp_path / "work"
    work.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "TUNER_ENVS"}, "PYTHONPATH": str(installed)}  # CI sets it
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=work, env=env, check=True, capture_output=True, text=True)
    found = json.loads(done.stdout.splitlines()[-1])
    package = installed / "tuner"

    # tuner is imported from the wheel's copy, not from the editable install of the repository.
    assert Path(found["tuner"]) == package / "__init__.py"
    # The data folders were installed inside the package (tuner.runtimes, tuner.search_spaces) and are read there.
    assert Path(found["runtimes_dir"]) == package / "runtimes"
    assert Path(found["spaces_dir"]) == package / "search_spaces"
    # Every runtime declared in the repository is listed from the wheel, each read from the wheel's file.
    assert found["names"] == sorted(p.stem for p in (REPOSITORY / "runtimes").glob("*.toml"))
    assert found["names"] == ["intel-tensorflow", "tensorflow", "tensorflow-eigen", "tensorflow-gpu"]
    assert found["runtime_paths"] == [str(package / "runtimes" / f"{name}.toml") for name in found["names"]]
    # Each runtime's own search space loads from the wheel (the CPU runtimes' are named after their runtime;
    # the GPU rows' runtime tunes no space of its own and names the stock one).
    assert found["runtime_spaces"] == ["intel-tensorflow", "tensorflow", "tensorflow-eigen", "tensorflow"]
    # A bare space name resolves to the wheel's shipped file; an explicit file path is still accepted.
    assert Path(found["tensorflow_space"]) == package / "search_spaces" / "tensorflow.toml"
    assert found["space_by_path"] == "tensorflow-eigen"
    # Managed environments never go into site-packages: installed from a wheel they are .envs/ of the working directory.
    assert Path(found["envs_dir"]) == work / ".envs"
