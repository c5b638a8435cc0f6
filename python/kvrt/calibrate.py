"""`python -m kvrt calibrate`: fit the pca KV cache format to a model.

Runs the engine over calibration text, computes per-(layer, kv head) bases and
quantizers and a per-layer sensitivity table (all in C++), and writes the
sidecar `<model>.kvcal.gguf` next to the model. `--kv pca[:B]` then uses it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import _core

DEFAULT_TEXT = Path(__file__).resolve().parent / "data" / "calibration.txt"


def default_output(model: Path) -> Path:
    name = model.name[:-5] if model.name.endswith(".gguf") else model.name
    return model.with_name(name + ".kvcal.gguf")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "calibrate",
        help="fit the pca KV cache format to a model (writes <model>.kvcal.gguf)",
        description="Fit the pca KV cache format to a model: PCA bases, quantizers and a "
        "per-layer sensitivity table from calibration text, written as a sidecar GGUF that "
        "`--kv pca[:B]` picks up beside the model.",
    )
    p.add_argument("model", type=Path, help="GGUF model file")
    p.add_argument("-f", "--file", type=Path, default=None,
                   help="calibration text (default: a WikiText-2 validation excerpt shipped with kvrt)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="sidecar path (default: <model>.kvcal.gguf)")
    p.add_argument("--bits", type=float, default=3.0,
                   help="default average bits per element of `--kv pca` (default 3.0)")
    p.add_argument("-c", "--ctx", type=int, default=512, help="chunk length (default 512)")
    p.add_argument("--tokens", type=int, default=4096,
                   help="calibration tokens used (default 4096)")
    p.add_argument("--probe-tokens", type=int, default=128,
                   help="tokens per sensitivity probe (default 128; 0 skips the probes: "
                   "quicker, but keys and values are then weighed by an unscaled proxy, and "
                   "the plan can be far off both in quality and in the channels it keeps)")
    p.add_argument("--probe-bits", type=float, default=2.0,
                   help="average bits of the probe configuration that scales the sensitivity "
                   "table (default 2.0)")
    p.add_argument("--probe-window", type=int, default=0,
                   help="recent window (pca:B:wN) of the probed layer, so the sensitivity is "
                   "that of the codes behind a window (default 0: none)")
    p.add_argument("--rope-pairs", type=int, default=-1,
                   help="most rotary pairs per key head whose pre-RoPE mean is subtracted, "
                   "largest first (default -1: all; 0: none; fewer make attention cheaper)")
    p.add_argument("-t", "--threads", type=int, default=0, help="threads (default: all cores)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    model: Path = args.model
    if not model.is_file():
        print(f"error: model file not found: {model}", file=sys.stderr)
        return 1
    text_path = args.file or DEFAULT_TEXT
    try:
        text = text_path.read_text(encoding="utf-8")
    except OSError as e:
        print(f"error: cannot read calibration text {text_path}: {e.strerror}", file=sys.stderr)
        return 1
    if not 0.5 <= args.bits <= 8:
        print("error: --bits must be in 0.5..8", file=sys.stderr)
        return 1
    if not 0.5 <= args.probe_bits <= 8:
        print("error: --probe-bits must be in 0.5..8", file=sys.stderr)
        return 1
    if args.probe_tokens < 0:
        print("error: --probe-tokens must be 0 (no probes) or more", file=sys.stderr)
        return 1
    if args.rope_pairs < -1:
        print("error: --rope-pairs must be -1 (all) or more", file=sys.stderr)
        return 1
    out = args.output or default_output(model)
    if out.exists() and not args.force:
        print(f"error: {out} exists (use --force to overwrite)", file=sys.stderr)
        return 1
    if args.probe_tokens == 0:
        # SmolLM2 at pca:3: keys kept on 15 % of channels and +604 % perplexity without the
        # probes, 93 % and +5 % with them (docs/RESULTS.md).
        print("warning: --probe-tokens 0: no KL probes, so the plan weighs keys against values "
              "by an unscaled proxy: it can lose far more quality and keep other channels than "
              "a probed plan (so its decode speed is not a probed plan's either)", file=sys.stderr)
    try:
        r = _core.calibrate(os.fspath(model), text, os.fspath(out), n_ctx=args.ctx,
                            n_threads=args.threads, max_tokens=args.tokens,
                            probe_tokens=args.probe_tokens, probe_bits=args.probe_bits,
                            default_bits=args.bits, rope_pairs=args.rope_pairs,
                            progress=True, probe_window=args.probe_window)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"calibrated on {r['n_tokens']} tokens in {r['seconds']:.1f} s; wrote {out}",
          file=sys.stderr)
    return 0
