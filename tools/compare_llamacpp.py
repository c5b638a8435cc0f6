#!/usr/bin/env python3
"""Side-by-side speed and perplexity of kvrt and llama.cpp on one GGUF, per KV cache format.

llama.cpp is built outside this repository (from the llama-cpp-python sdist's
vendor/llama.cpp); point --llama-bin at its bin folder. Both programs run in
the same invocation on the same machine, file, text and thread count, and the
tables report kvrt / llama.cpp ratios per KV cache format: llama.cpp with
`-ctk F -ctv F -fa on` (its quantized caches need flash attention; f16 runs
with it too, so every llama.cpp row uses the same attention path), kvrt with
`--kv F`. A format llama.cpp does not have (affine:B, rot:B, pca) gets kvrt's
numbers only, unless `--against` names llama.cpp caches that every format is
also set against (one column each, llama.cpp run once per cache).
`--device cuda` runs kvrt with `--device cuda` and llama.cpp with `-ngl 99`.

    python tools/compare_llamacpp.py --llama-bin /path/llama.cpp/build/bin \
        -m model.gguf -t 2 --kv f16,q8_0,q4_0 [-d 0,1024] \
        [--ppl-text text.txt -c 1024 --chunks 20]
    python tools/compare_llamacpp.py --llama-bin B --device cuda -m bench_8b_q4_0.gguf \
        --kv f16,pca:3 -p 0 -n 128 -d 0,32768 -r 1 --against f16,q4_0
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys

# KV cache types llama.cpp's -ctk/-ctv accept that kvrt also implements.
LLAMA_CPP_KV = {"f32", "f16", "q8_0", "q4_0"}


def run(cmd: list[str], with_stderr: bool = False) -> str:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    # llama-perplexity logs its final estimate on stderr.
    return r.stdout + r.stderr if with_stderr else r.stdout


def bench_args(a) -> list[str]:
    return [
        "-m",
        a.model,
        "-t",
        str(a.t),
        "-r",
        str(a.r),
        "-p",
        str(a.p),
        "-n",
        str(a.n),
        "-d",
        a.d,
        "-o",
        "json",
    ]


def test_name(row: dict) -> str:
    n_p, n_g, d = row["n_prompt"], row["n_gen"], row.get("n_depth", 0)
    name = f"pp{n_p}" if n_p else f"tg{n_g}"
    return name + (f" @ d{d}" if d else "")


def llama_bench(a, kv: str) -> dict:
    cmd = [f"{a.llama_bin}/llama-bench", *bench_args(a), "-ctk", kv, "-ctv", kv, "-fa", "on"]
    if a.device == "cuda":
        cmd += ["-ngl", "99"]
    for extra in a.llama_args:
        cmd += extra.split()
    return {test_name(r): (r["avg_ts"], r["stddev_ts"]) for r in json.loads(run(cmd))}


def kvrt_bench(a, kv: str) -> tuple[dict, dict]:
    cmd = [a.kvrt_cli, "bench", *bench_args(a), "--kv", kv, "--device", a.device]
    rows = json.loads(run(cmd))
    return {test_name(r): (r["avg_ts"], r["stddev_ts"]) for r in rows}, rows[0]


def final_ppl(out: str) -> tuple[float, float]:
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
    if not m:
        sys.exit("no 'Final estimate' line in the perplexity output")
    return float(m.group(1)), float(m.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--llama-bin", required=True, help="folder with llama-bench and llama-perplexity"
    )
    ap.add_argument("--kvrt-cli", default=shutil.which("kvrt-cli") or "kvrt-cli")
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", type=int, default=2, help="threads for both")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("-d", default="0", help="depths, comma separated")
    ap.add_argument("--kv", default="f16", help="KV cache formats, comma separated")
    ap.add_argument("--no-bench", action="store_true", help="perplexity only")
    ap.add_argument("--ppl-text", help="also compare perplexity on this text")
    ap.add_argument("-c", type=int, default=1024)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--llama-args", nargs="*", default=[], help="extra llama-bench args")
    ap.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: kvrt --device cuda, llama.cpp -ngl 99",
    )
    ap.add_argument(
        "--against",
        default="",
        help="llama.cpp caches (comma separated) every format is also set against",
    )
    a = ap.parse_args()
    formats = [f for f in a.kv.split(",") if f]
    against = [f for f in a.against.split(",") if f]
    unknown = [f for f in against if f not in LLAMA_CPP_KV]
    if unknown:
        known = ", ".join(sorted(LLAMA_CPP_KV))
        ap.error(f"--against: llama.cpp has no cache {unknown[0]!r} (it has {known})")

    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, "
        f"{a.t} threads, device {a.device}, model {a.model}\n"
    )
    if not a.no_bench:
        llama_runs: dict[str, dict] = {}  # llama.cpp cache -> its results, each run once

        def llama_of(kv: str) -> dict:
            if kv not in llama_runs:
                llama_runs[kv] = llama_bench(a, kv) if kv in LLAMA_CPP_KV else {}
            return llama_runs[kv]

        def ratio(km: float, ref) -> str:
            return f"{km / ref[0]:.2f}" if ref else "—"

        extra_head = "".join(f" kvrt / llama.cpp {r} |" for r in against)
        extra_rule = "".join(" ---: |" for _ in against)
        print(
            "| kv | KV bytes/token | test | llama.cpp t/s | kvrt t/s | kvrt / llama.cpp |"
            + extra_head
        )
        print(
            "| -- | -------------: | ---- | ------------: | -------: | ---------------: |"
            + extra_rule
        )
        for kv in formats:
            ours, first = kvrt_bench(a, kv)
            theirs = llama_of(kv)
            per_token = first["kv_bytes_per_token"]
            for name, (km, ks) in ours.items():
                lm_ls = theirs.get(name)
                llama = f"{lm_ls[0]:.2f} ± {lm_ls[1]:.2f}" if lm_ls else "—"
                extra = "".join(f" {ratio(km, llama_of(r).get(name))} |" for r in against)
                print(
                    f"| {kv} | {per_token:.0f} | {name} | {llama} | {km:.2f} ± {ks:.2f} | "
                    f"{ratio(km, lm_ls)} |{extra}",
                    flush=True,
                )

    if a.ppl_text:
        common = ["-m", a.model, "-f", a.ppl_text, "-c", str(a.c)]
        common += ["--chunks", str(a.chunks), "-t", str(a.t)]
        print(f"\nperplexity of {a.ppl_text}, -c {a.c}, {a.chunks} chunks:\n")
        print("| kv | llama.cpp PPL | kvrt PPL | kvrt / llama.cpp |")
        print("| -- | ------------: | -------: | ---------------: |")
        for kv in formats:
            kp, ke = final_ppl(
                run([a.kvrt_cli, "perplexity", *common, "--kv", kv, "--device", a.device])
            )
            if kv in LLAMA_CPP_KV:
                cmd = [f"{a.llama_bin}/llama-perplexity", *common, "-ctk", kv, "-ctv", kv]
                cmd += ["-ngl", "99"] if a.device == "cuda" else []
                lp, le = final_ppl(run([*cmd, "-fa", "on"], with_stderr=True))
                llama, ratio = f"{lp:.4f} ± {le:.4f}", f"{kp / lp:.4f}"
            else:
                llama, ratio = "—", "—"
            print(f"| {kv} | {llama} | {kp:.4f} ± {ke:.4f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
