"""`python -m kvrt inspect`: a GGUF file's metadata and tensor table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import _core


def _one_line(v: str, limit: int = 240) -> str:
    # Chat templates span many lines and kilobytes: one escaped, shortened line each.
    v = v.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return v if len(v) <= limit else f"{v[:limit]}... ({len(v)} chars)"


def format_report(path: str | Path, max_items: int = 8, tensors: bool = True) -> str:
    f = _core.GGUFFile(str(path))
    keys = list(f.metadata)
    lines = [f"{f.path}: GGUF v{f.version}, alignment {f.alignment}", ""]
    lines.append(f"metadata ({len(keys)} keys)")
    width = max((len(k) for k in keys), default=0)
    for k in keys:
        # Long arrays (vocabularies, merges) are abbreviated by the reader.
        lines.append(f"  {k:<{width}} = {_one_line(f.value_string(k, max_items))}")
    ts = f.tensors
    total = sum(t["nbytes"] for t in ts)
    lines += ["", f"tensors ({len(ts)}, {total / 2**20:.2f} MiB)"]
    if tensors and ts:
        nw = max(len(t["name"]) for t in ts)
        shapes = [" x ".join(str(d) for d in t["shape"]) for t in ts]
        sw = max(len(s) for s in shapes)
        lines.append(f"  {'name':<{nw}}  {'type':<6}  {'shape':<{sw}}  {'bytes':>12}")
        for t, s in zip(ts, shapes):
            lines.append(f"  {t['name']:<{nw}}  {t['type_name']:<6}  {s:<{sw}}  {t['nbytes']:>12}")
    return "\n".join(lines)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "inspect",
        help="print a GGUF file's metadata and tensors",
        description="Print a GGUF file's metadata (long arrays abbreviated) and its "
        "tensor table (name, type, shape in ggml order, bytes).",
    )
    p.add_argument("model", type=Path, help="GGUF file")
    p.add_argument("--max-items", type=int, default=8, help="array items shown per key (default 8)")
    p.add_argument("--no-tensors", action="store_true", help="metadata only")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    if args.max_items < 0:
        print("kvrt inspect: error: --max-items must be >= 0", file=sys.stderr)
        return 2
    try:
        report = format_report(args.model, args.max_items, not args.no_tensors)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"kvrt inspect: error: {e}", file=sys.stderr)
        return 1
    try:
        print(report)
    except BrokenPipeError:  # `| head`
        sys.stderr.close()
    return 0
