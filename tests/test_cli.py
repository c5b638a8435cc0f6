"""kvrt-cli end to end: perplexity, bench, and clear errors on bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTDATA, run_cli

EXCERPT = TESTDATA / "shakespeare_excerpt.txt"

# llama.cpp's llama-perplexity (llama-cpp-python 0.3.36's vendor/llama.cpp,
# CPU build, f16 cache) on the same file, text and context; see
# docs/PERFORMANCE.md:
#   llama-perplexity -m SmolLM2-135M-Instruct.Q4_1.gguf \
#       -f tests/data/shakespeare_excerpt.txt -c 512 --chunks 8 -t 2
#   Final estimate: PPL = 42.0314 +/- 3.01167
LLAMA_CPP_PPL_C512_CHUNKS8 = 42.0314


def _final_ppl(stdout: str) -> float:
    m = re.search(r"^Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)$", stdout, re.M)
    assert m, stdout
    return float(m.group(1))


def test_perplexity_matches_llama_cpp(cli, model_path):
    r = run_cli(cli, "perplexity", "-m", model_path, "-f", EXCERPT, "-c", 512, "--chunks", 8, "-t", 2)
    assert r.returncode == 0, r.stderr
    ppl = _final_ppl(r.stdout)
    assert re.search(r"^KV cache: \d+ bytes, 16\.00 bits/element \(f16\)$", r.stderr, re.M)
    assert re.match(r"\[1\][0-9.]+,\[2\]", r.stdout)
    assert abs(ppl / LLAMA_CPP_PPL_C512_CHUNKS8 - 1) < 0.005, ppl


def test_bench_table(cli, model_path):
    r = run_cli(cli, "bench", "-m", model_path, "-p", 32, "-n", 4, "-r", 2, "-d", "0,40", "-t", 2)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| llama")]
    tests = [row.split("|")[7].strip() for row in rows]
    assert tests == ["pp32", "tg4", "pp32 @ d40", "tg4 @ d40"]
    for row in rows:
        assert re.search(r"\| \d+\.\d\d ± \d+\.\d\d \|$", row), row
    assert "KV cache:" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["perplexity", "-m", "/nonexistent.gguf", "-f", str(EXCERPT)], "cannot open"),
        (["perplexity", "-m", "MODEL", "-f", "/nonexistent.txt"], "cannot open '/nonexistent.txt'"),
        (["perplexity", "-m", "MODEL", "-f", str(EXCERPT), "--bogus"], "unknown option '--bogus'"),
        (["perplexity", "-m", "MODEL", "-f", str(EXCERPT), "-c", "abc"], "not an integer"),
        (["perplexity", "-m", "MODEL", "-f", str(EXCERPT), "-c", "-5"], "out of range"),
        (["perplexity", "-m", "MODEL", "-f", str(EXCERPT), "--kv", "q9"], "unknown KV cache format 'q9'"),
        (["perplexity", "-m", "MODEL", "-f", str(EXCERPT), "-c", "100000"], "tokens; at least"),
        (["bench", "-m", "MODEL", "-t"], "needs a value"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_bad_input_gives_one_line_error(cli, model_path, args, message):
    args = [str(model_path) if a == "MODEL" else a for a in args]
    r = run_cli(cli, *args)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert message in lines[-1], r.stderr
    assert "Traceback" not in r.stderr and "terminate" not in r.stderr


def test_malformed_model_file(cli, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)
    r = run_cli(cli, "perplexity", "-m", bad, "-f", EXCERPT)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "gguf" in r.stderr, r.stderr


def test_help_lists_options(cli):
    r = run_cli(cli, "perplexity", "--help")
    assert r.returncode == 0
    for flag in ("-m", "-f", "-c", "--chunks", "-t", "-ctk", "-ctv"):
        assert flag in r.stdout
    r = run_cli(cli, "--help")
    assert "perplexity" in r.stdout and "bench" in r.stdout


# A stand-in llama-bench: tg4 at 100 tokens/s for f16, 50 for q4_0, its calls logged.
FAKE_LLAMA_BENCH = """#!{python}
import json, sys
a = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(" ".join(a) + "\\n")
kv = a[a.index("-ctk") + 1]
ts = {{"f16": 100.0, "q4_0": 50.0, "q8_0": 80.0}}[kv]
print(json.dumps([{{"n_prompt": 0, "n_gen": 4, "n_depth": 0, "avg_ts": ts, "stddev_ts": 0.0}}]))
"""


def test_compare_llamacpp_sets_every_format_against_the_named_caches(cli, model_path, tmp_path):
    """tools/compare_llamacpp.py: a row per kvrt format and test, its ratio to llama.cpp's same
    cache where there is one, and one more ratio per --against cache, each llama.cpp cache run
    once; kvrt's numbers from a real run, llama.cpp's from a stand-in."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "llama-bench"
    fake.write_text(FAKE_LLAMA_BENCH.format(python=sys.executable, log=str(log)))
    fake.chmod(0o755)
    tool = Path(__file__).resolve().parent.parent / "tools" / "compare_llamacpp.py"
    args = ["--llama-bin", str(tmp_path), "--kvrt-cli", cli, "-m", str(model_path), "-t", "2",
            "-p", "0", "-n", "4", "-r", "1", "--kv", "f16,rot:4", "--against", "f16,q4_0"]
    r = subprocess.run(
        [sys.executable, str(tool), *args], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    rows = [
        line.split("|")[1:-1]
        for line in r.stdout.splitlines()
        if line.startswith(("| f16 ", "| rot:4 "))
    ]
    assert [c.strip() for c in rows[0][:3]] == ["f16", "23040", "tg4"]
    assert len(rows) == 2 and all(len(c) == 8 for c in rows)
    for cells in rows:
        ours = float(cells[4].split("±")[0])
        assert cells[6].strip() == f"{ours / 100.0:.2f}"
        assert cells[7].strip() == f"{ours / 50.0:.2f}"
    assert rows[0][5].strip() == rows[0][6].strip()  # f16 against llama.cpp's f16 both ways
    assert rows[1][3].strip() == "—" and rows[1][5].strip() == "—"  # llama.cpp has no rot:4
    calls = log.read_text().splitlines()
    assert sorted(c.split("-ctk ")[1].split()[0] for c in calls) == ["f16", "q4_0"]
    assert all("-ngl" not in c for c in calls)
    bad = subprocess.run(
        [sys.executable, str(tool), *args[:-1], "q9"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "no cache 'q9'" in bad.stderr.splitlines()[-1]
