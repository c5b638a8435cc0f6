#!/usr/bin/env python3
"""Side-by-side speed and perplexity of kvrt and llama.cpp on one GGUF.

llama.cpp is built outside this repository (from the llama-cpp-python sdist's
vendor/llama.cpp); point --llama-bin at its bin folder. Both programs run in
the same invocation on the same machine, file, text and thread count, and the
table reports kvrt / llama.cpp ratios.

    python tools/compare_llamacpp.py --llama-bin /path/llama.cpp/build/bin \
        -m model.gguf -t 2 [--ppl-text text.txt -c 1024 --chunks 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys


def run(cmd: list[str]) -> str:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return r.stdout


def llama_bench(bin_dir: str, a, test: str, depth: int) -> tuple[float, float]:
    n_p, n_g = (a.p, 0) if test == "pp" else (0, a.n)
    cmd = [f"{bin_dir}/llama-bench", "-m", a.model, "-t", str(a.t), "-r", str(a.r),
           "-p", str(n_p), "-n", str(n_g), "-o", "json"]
    if depth:
        cmd += ["-d", str(depth)]
    for kv in a.llama_args:
        cmd += kv.split()
    rows = json.loads(run(cmd))
    return rows[0]["avg_ts"], rows[0]["stddev_ts"]


def kvrt_bench(cli: str, a, test: str, depth: int) -> tuple[float, float]:
    n_p, n_g = (a.p, 0) if test == "pp" else (0, a.n)
    out = run([cli, "bench", "-m", a.model, "-t", str(a.t), "-r", str(a.r),
               "-p", str(n_p), "-n", str(n_g), "-d", str(depth)])
    m = re.search(r"\| ([0-9.]+) ± ([0-9.]+) \|\s*$", out.strip().splitlines()[-1])
    return float(m.group(1)), float(m.group(2))


def final_ppl(out: str) -> tuple[float, float]:
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
    return float(m.group(1)), float(m.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-bin", required=True, help="folder with llama-bench and llama-perplexity")
    ap.add_argument("--kvrt-cli", default=shutil.which("kvrt-cli") or "kvrt-cli")
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", type=int, default=2, help="threads for both")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("-d", default="0", help="depths, comma separated")
    ap.add_argument("--ppl-text", help="also compare perplexity on this text")
    ap.add_argument("-c", type=int, default=1024)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--llama-args", nargs="*", default=[], help="extra llama-bench args")
    a = ap.parse_args()

    print(f"machine: {platform.machine()} {platform.processor() or ''}, "
          f"{a.t} threads, model {a.model}\n")
    print("| test | llama.cpp t/s | kvrt t/s | kvrt / llama.cpp |")
    print("| ---- | ------------: | -------: | ---------------: |")
    for depth in [int(x) for x in a.d.split(",")]:
        for test in ("pp", "tg"):
            if depth and test == "pp":
                continue
            name = f"{test}{a.p if test == 'pp' else a.n}" + (f" @ d{depth}" if depth else "")
            lm, ls = llama_bench(a.llama_bin, a, test, depth)
            km, ks = kvrt_bench(a.kvrt_cli, a, test, depth)
            print(f"| {name} | {lm:.2f} ± {ls:.2f} | {km:.2f} ± {ks:.2f} | {km / lm:.2f} |", flush=True)

    if a.ppl_text:
        common = ["-m", a.model, "-f", a.ppl_text, "-c", str(a.c), "--chunks", str(a.chunks),
                  "-t", str(a.t)]
        lp, le = final_ppl(run([f"{a.llama_bin}/llama-perplexity", *common]))
        kp, ke = final_ppl(run([a.kvrt_cli, "perplexity", *common]))
        print(f"\n| perplexity (-c {a.c}, {a.chunks} chunks) | llama.cpp | kvrt | kvrt / llama.cpp |")
        print("| --- | ---: | ---: | ---: |")
        print(f"| {a.ppl_text} | {lp:.4f} ± {le:.4f} | {kp:.4f} ± {ke:.4f} | {kp / lp:.4f} |")


if __name__ == "__main__":
    main()
