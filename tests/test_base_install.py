"""Running the lab needs no extra: a fresh venv with `pip install .` alone imports every module of the package
(except the tool-only modules that name their extra), runs `cmglab up` and onboards one device through the CMG.

This is the check that would have caught the compose images crashing at import (wsproto undeclared): the test
extra pulled it in by accident, so every other test ran with it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmglab.runtime.sockets import handover
from cmglab.tools.processes import isolated_lab

ROOT = Path(__file__).resolve().parents[1]

# modules that are tools of their own, run only with their extra installed (pyproject says which)
NEEDS_AN_EXTRA = {
    "cmglab.tools.fleet.locustfile": "locust",  # `cmglab fleet locust` runs Locust on it (extra: fleet)
    "cmglab.tools.reliability.fuzz": "hypothesis",  # the reliability campaign's fuzzer: schemathesis (extra: e2e)
}

IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, cmglab
failed = {}
for m in pkgutil.walk_packages(cmglab.__path__, "cmglab."):
    if m.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(m.name)
    except ImportError as e:
        failed[m.name] = getattr(e, "name", None) or str(e)
print(json.dumps(failed))
"""


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv holding `pip install .` only: the copy is built from a copy of the tree, never the checkout, so
    no build directory lands in the repository; pip's cache keeps the second run quick."""
    where = tmp_path_factory.mktemp("base-install")
    src = where / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".cmglab", "*.egg-info", "build", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"
        ),
    )
    env_dir = where / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check", str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    yield env_dir


def base_env(env_dir: Path) -> dict[str, str]:
    """The environment a user of that venv has: its bin first on PATH, nothing of this process' venv."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH") and not k.startswith("CMGLAB_")
    }
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_base_install_holds_no_test_dependency(base_venv: Path) -> None:
    py = str(base_venv / "bin" / "python")
    for extra_only in ("pytest", "locust", "playwright", "psycopg", "hypothesis"):
        probe = subprocess.run([py, "-c", f"import {extra_only}"], capture_output=True, timeout=60)
        assert probe.returncode != 0, f"{extra_only} is in the base install: the test would prove nothing"


def test_every_module_imports_without_an_extra(base_venv: Path) -> None:
    run = subprocess.run(
        [str(base_venv / "bin" / "python"), "-c", IMPORT_EVERY_MODULE],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=base_venv,
        env=base_env(base_venv),
    )
    assert run.returncode == 0, run.stderr
    failed: dict[str, str] = json.loads(run.stdout)
    assert failed == NEEDS_AN_EXTRA


def test_cmglab_up_and_one_device_onboard_with_the_base_install(base_venv: Path, tmp_path: Path) -> None:
    env = base_env(base_venv)
    cmglab = str(base_venv / "bin" / "cmglab")
    lab = isolated_lab(tmp_path / "lab")  # reserved ports; the lab's files are the same whatever installed them

    with handover("127.0.0.1") as (fds_env, fds):  # the ports this process reserved, as test_lab_up hands them
        up = subprocess.run(
            [cmglab, "up", "--detach", "--lab", str(lab.dir)],
            capture_output=True,
            text=True,
            timeout=180,
            env={**env, **fds_env},
            cwd=tmp_path,
            pass_fds=fds,
        )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        home = tmp_path / "device01"
        onboard = subprocess.run(
            [cmglab, "device", "onboard", "--home", str(home), "--lab", str(lab.dir)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
        assert onboard.returncode == 0, onboard.stdout + onboard.stderr
        # the agents that ran are the base venv's console scripts, not this process' ones
        assert shutil.which("ccmsetup", path=env["PATH"]) == str(base_venv / "bin" / "ccmsetup")
        assert (home / "device.json").exists()
    finally:
        down = subprocess.run(
            [cmglab, "down", "--lab", str(lab.dir)], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
        )
        assert down.returncode == 0, down.stdout + down.stderr
