"""`python -m kvrt eval`: quality of KV cache formats on a model and a text.

For each context size the engine (cpp/eval.h) cuts the text into
llama-perplexity's chunks and evaluates every chunk once with the reference
cache (f16) and once per format, side by side. Per format and context it
reports perplexity, the change against the reference, KL(reference || format)
of the next-token distributions, top-1 agreement, the attention-output error
per layer, and the measured cache size. Optional passkey retrieval checks
long-context recall with greedy generation.

    python -m kvrt eval m.gguf --kv f16,q8_0,q4_0 -f text.txt --ctx 1024,4096 --out report/
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

from . import _core
from .model import Model

# Shipped beside the package in a source checkout (tests/data).
DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "tests" / "data" / "shakespeare_excerpt.txt"

PASSKEY_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
PASSKEY_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
PASSKEY_CTX = (1024, 2048, 4096, 8192)


class Progress:
    """One status line on stderr, redrawn in place: a bar over all steps."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled = max(total, 1), 0, enabled
        self.start = time.monotonic()

    def step(self, label: str, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        secs = time.monotonic() - self.start
        eta = secs / frac - secs if frac > 0 else 0.0
        sys.stderr.write(f"\r[{bar:<30}] {self.done}/{self.total} {label:<40.40} eta {eta:5.0f}s")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def split_specs(kv: str) -> list:
    specs = [s.strip() for s in kv.split(",") if s.strip()]
    if not specs:
        raise ValueError("--kv: no KV cache format given")
    return specs


def parse_ints(s: str, option: str) -> list:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option}: '{s}' is not a comma-separated list of integers") from None
    if not out or any(x <= 0 for x in out):
        raise ValueError(f"{option}: '{s}' needs positive integers")
    return out


def _kv_args(spec: str, kv_calib: str | None = None) -> dict:
    k, _, v = spec.partition("/")
    return {"cache_type_k": k, "cache_type_v": v or k, "kv_calib": kv_calib}


def measure(
    model_path: str,
    tokens: list,
    specs: list,
    n_ctx: int,
    n_chunks: int = 0,
    reference: str = "f16",
    n_threads: int = 0,
    progress: Progress | None = None,
    kv_calib: str | None = None,
) -> dict:
    """Runs the engine for one context size; returns its dict (reference,
    formats) with per-row arrays logp and kl as float32 numpy arrays.
    kv_calib: the pca sidecar (default: <model>.kvcal.gguf)."""

    def tick(chunk: int, i: int) -> None:
        if progress is not None and i >= 0:
            progress.step(f"ctx {n_ctx} chunk {chunk + 1} {specs[i]}")

    return _core.eval_compare(
        model_path, tokens, n_ctx, n_chunks, specs, reference, n_threads, 512, tick, kv_calib or ""
    )


def row_of(r: dict, ref: dict, n_ctx: int) -> dict:
    """The report's row for one format at one context size."""
    err = [float(x) for x in r["attn_rel_err"]]
    return {
        "format": r["spec"],
        "cache": r["format"],
        "ctx": n_ctx,
        "n_chunks": r["n_chunks"],
        "n_scored": r["n_scored"],
        "ppl": r["ppl"],
        "ppl_err": r["ppl_err"],
        "dppl_pct": 100.0 * (r["ppl"] / ref["ppl"] - 1.0),
        "kl_mean": r["kl_mean"],
        "kl_max": r["kl_max"],
        "top1_pct": 100.0 * r["top1"],
        "attn_rel_err": float(np.mean(err)) if err else 0.0,
        "attn_rel_err_per_layer": err,
        "bits_per_element": r["bits_per_element"],
        "kv_bytes": r["kv_bytes"],
        "kv_bytes_per_token": r["bytes_per_token"],
    }


TABLE_HEAD = (
    "| format | ctx | PPL | ΔPPL % | KL mean | top-1 % | attn rel err | bits/el | KV B/token |\n"
    "| ------ | --: | --: | -----: | ------: | ------: | -----------: | ------: | ---------: |"
)


def table_line(r: dict) -> str:
    return (
        f"| {r['format']} | {r['ctx']} | {r['ppl']:.4f} ± {r['ppl_err']:.4f} | "
        f"{r['dppl_pct']:+.3f} | {r['kl_mean']:.3e} | {r['top1_pct']:.2f} | "
        f"{r['attn_rel_err']:.3e} | {r['bits_per_element']:.2f} | {r['kv_bytes_per_token']:.0f} |"
    )


# --- passkey retrieval --------------------------------------------------------


def passkey_prompt(m: Model, n_tokens: int, depth: float, key: int) -> list:
    """Token ids of about n_tokens: filler with the key sentence at `depth`
    (0: start, 1: just before the question), ending with the question."""
    needle = m.tokenize(f" The pass key is {key}. Remember it. {key} is the pass key. ", False)
    question = m.tokenize(" What is the pass key? The pass key is", False)
    filler = m.tokenize(PASSKEY_FILLER, False)
    bos = [m.bos_id] if m.bos_id >= 0 else []
    n_fill = n_tokens - len(bos) - len(needle) - len(question)
    if n_fill < len(filler):
        raise ValueError(f"passkey: a context of {n_tokens} tokens is too small")
    reps = n_fill // len(filler)  # whole sentences only, so the needle never splits one
    at = round(depth * reps)
    return bos + filler * at + needle + filler * (reps - at) + question


def passkey(
    model_path: str,
    specs: list,
    ctxs: list,
    depths=PASSKEY_DEPTHS,
    trials: int = 1,
    n_threads: int = 0,
    seed: int = 0,
    progress: Progress | None = None,
    kv_calib: str | None = None,
) -> list:
    """Greedy passkey retrieval per format, context and depth; each result
    holds the number of trials whose generated text starts with the key."""
    rng = random.Random(seed)
    keys = {
        (c, d, t): rng.randint(10000, 99999) for c in ctxs for d in depths for t in range(trials)
    }
    out = []
    for spec in specs:
        m = Model(model_path, n_ctx=max(ctxs), n_threads=n_threads, **_kv_args(spec, kv_calib))
        for c in ctxs:
            for d in depths:
                hits = 0
                answers, trial_keys = [], [keys[(c, d, t)] for t in range(trials)]
                for key in trial_keys:
                    ids = passkey_prompt(m, c - 8, d, key)
                    text = m.generate(ids, max_tokens=8, temperature=0.0)
                    answers.append(text)
                    hits += text.strip().startswith(str(key))
                    if progress is not None:
                        progress.step(f"passkey {spec} ctx {c} depth {d:.0%}")
                out.append(
                    {
                        "format": spec,
                        "ctx": c,
                        "depth": d,
                        "correct": hits,
                        "trials": trials,
                        "keys": trial_keys,
                        "answers": answers,
                    }
                )
    return out


def passkey_table(results: list) -> str:
    depths = sorted({r["depth"] for r in results})
    head = "| format | ctx | " + " | ".join(f"{d:.0%}" for d in depths) + " |"
    lines = [head, "| --- | --: | " + " | ".join("--:" for _ in depths) + " |"]
    rows = {}
    for r in results:
        rows.setdefault((r["format"], r["ctx"]), {})[r["depth"]] = f"{r['correct']}/{r['trials']}"
    for (spec, c), cells in rows.items():
        lines.append(f"| {spec} | {c} | " + " | ".join(cells.get(d, "") for d in depths) + " |")
    return "\n".join(lines)


# --- plots ---------------------------------------------------------------------


def pareto_front(points: list) -> list:
    """Indices of (bits, loss) points not beaten on both axes, by bits."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot_loss_vs_bits(rows: list, path: Path, reference: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    ctxs = sorted({r["ctx"] for r in rows})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ci, c in enumerate(ctxs):
        rs = [r for r in rows if r["ctx"] == c]
        pts = [(r["bits_per_element"], r["dppl_pct"]) for r in rs]
        color = colors[ci % len(colors)]
        ax.scatter(
            [p[0] for p in pts], [p[1] for p in pts], s=40, color=color, zorder=3, label=f"ctx {c}"
        )
        front = pareto_front(pts)
        ax.plot(
            [pts[i][0] for i in front],
            [pts[i][1] for i in front],
            color=color,
            lw=1.5,
            alpha=0.6,
            zorder=2,
            label=f"Pareto front, ctx {c}",
        )
        ax.scatter(
            [pts[i][0] for i in front],
            [pts[i][1] for i in front],
            s=140,
            facecolors="none",
            edgecolors=color,
            lw=1.5,
            zorder=3,
        )
        for r, p in zip(rs, pts):
            ax.annotate(r["format"], p, textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    # Linear near zero, logarithmic beyond: small losses stay readable beside
    # a format that breaks the model.
    ax.set_yscale("symlog", linthresh=1.0)
    ys = [r["dppl_pct"] for r in rows]
    ax.set_ylim(min(-1.0, 1.5 * min(ys)), max(1.0, 1.5 * max(ys)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))
    ax.set_xlabel("KV cache bits per element (measured from the allocator)")
    ax.set_ylabel(f"perplexity change vs {reference} (%, symlog)")
    ax.set_title("Perplexity loss vs KV cache size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_layer_error(rows: list, path: Path, reference: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx = max(r["ctx"] for r in rows)
    rs = [r for r in rows if r["ctx"] == ctx]
    fig, ax = plt.subplots(figsize=(9.5, 5), dpi=120)
    log = any(v > 0 for r in rs for v in r["attn_rel_err_per_layer"])
    for r in rs:
        err = np.asarray(r["attn_rel_err_per_layer"])
        if log and not np.any(err > 0):
            continue  # the reference itself: zero everywhere
        ax.plot(np.arange(len(err)), err, marker="o", ms=3, label=r["format"])
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("mean ||o - o_ref|| / ||o_ref||")
    ax.set_title(
        f"Attention-output relative error per layer vs {reference} (ctx {ctx}, "
        "free-running: errors compound over layers)",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- the command -----------------------------------------------------------------


def run(
    model_path: str,
    specs: list,
    text_path: str,
    ctxs: list,
    n_chunks: int = 0,
    out_dir: str | None = None,
    reference: str = "f16",
    n_threads: int = 0,
    passkey_ctxs: list | None = None,
    passkey_depths=PASSKEY_DEPTHS,
    passkey_trials: int = 1,
    show_progress: bool = True,
    kv_calib: str | None = None,
) -> dict:
    """Measures every format at every context size (and passkey retrieval
    when passkey_ctxs is given); writes the report to out_dir when given and
    returns it. Per-row arrays (log p of the true token, KL) go to report.npz."""
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"model file not found: {model_path}")
    text = Path(text_path).read_text(encoding="utf-8", errors="replace")
    tok = Model(model_path, n_ctx=64, n_threads=1)
    tokens = tok.tokenize(text, True, False)
    arch = tok.metadata.get("general.architecture", "")
    n_ctx_train = int(tok.metadata.get(f"{arch}.context_length", 0) or 0)
    del tok

    total_chunks = 0
    for c in ctxs:
        if len(tokens) < 2 * c:
            raise ValueError(
                f"the text has {len(tokens)} tokens; at least {2 * c} are needed for a context "
                f"of {c}"
            )
        total_chunks += min(n_chunks, len(tokens) // c) if n_chunks > 0 else len(tokens) // c
    if passkey_ctxs and n_ctx_train:
        passkey_ctxs = [c for c in passkey_ctxs if c <= n_ctx_train]
    n_passkey = len(specs) * len(passkey_ctxs or []) * len(passkey_depths) * passkey_trials
    bar = Progress(total_chunks * len(specs) + n_passkey, show_progress)

    rows, arrays, refs = [], {}, {}
    for c in ctxs:
        res = measure(model_path, tokens, specs, c, n_chunks, reference, n_threads, bar, kv_calib)
        ref = res["reference"]
        refs[c] = {k: v for k, v in ref.items() if k not in ("logp", "kl")}
        arrays[f"ctx{c}/{reference}/logp_ref"] = ref["logp"]
        for r in res["formats"]:
            rows.append(row_of(r, ref, c))
            arrays[f"ctx{c}/{r['spec']}/logp"] = r["logp"]
            arrays[f"ctx{c}/{r['spec']}/kl"] = r["kl"]
    pk = None
    if passkey_ctxs:
        pk = passkey(
            model_path,
            specs,
            passkey_ctxs,
            passkey_depths,
            passkey_trials,
            n_threads,
            progress=bar,
            kv_calib=kv_calib,
        )
    bar.close()

    report = {
        "model": str(model_path),
        "text": str(text_path),
        "n_tokens": len(tokens),
        "reference": reference,
        "formats": specs,
        "ctx": ctxs,
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "n_threads": n_threads,
        "reference_ppl": {
            str(c): {"ppl": r["ppl"], "ppl_err": r["ppl_err"]} for c, r in refs.items()
        },
        "results": rows,
        "passkey": pk,
    }
    if out_dir:
        write_report(report, arrays, Path(out_dir))
    report["arrays"] = arrays
    return report


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "the report's plots need matplotlib: pip install \"kvrt[eval]\""
        ) from None


def write_report(report: dict, arrays: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    np.savez_compressed(out / "report.npz", **arrays)
    plot_loss_vs_bits(report["results"], out / "ppl_vs_bits.png", report["reference"])
    plot_layer_error(report["results"], out / "attn_error_per_layer.png", report["reference"])
    md = [
        "# KV cache formats: quality report",
        "",
        f"Model `{report['model']}`, text `{report['text']}` ({report['n_tokens']} tokens), "
        f"reference cache `{report['reference']}`, llama-perplexity chunking (second half of "
        "each chunk scored).",
        "",
        TABLE_HEAD,
        *[table_line(r) for r in report["results"]],
        "",
        "KL: mean over scored positions of KL(reference || format). attn rel err: mean over "
        "layers and scored positions of ||o - o_ref|| / ||o_ref|| of each layer's attention "
        "output, free-running (each layer sees the format's own inputs, so the error compounds "
        "over layers). bits/el and KV B/token: bytes the cache allocates, from the allocator.",
        "",
        "![perplexity loss vs bits](ppl_vs_bits.png)",
        "",
        "![attention error per layer](attn_error_per_layer.png)",
    ]
    if report["passkey"]:
        md += [
            "",
            "## Passkey retrieval (greedy, correct / trials)",
            "",
            passkey_table(report["passkey"]),
        ]
    (out / "report.md").write_text("\n".join(md) + "\n")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        help="quality of KV cache formats (perplexity, KL, top-1, attention error, bits)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="GGUF model file")
    p.add_argument(
        "--kv",
        default="f32,f16",
        help="comma-separated KV cache formats; K/V for keys and values apart (default: f32,f16)",
    )
    p.add_argument(
        "-f",
        "--text",
        default=None,
        help=f"text file (default: {DEFAULT_TEXT.name} from tests/data)",
    )
    p.add_argument("--ctx", default="1024", help="context sizes, comma-separated (default: 1024)")
    p.add_argument("--chunks", type=int, default=0, help="chunks per context size (default: all)")
    p.add_argument("--out", default=None, help="report folder: report.md/json/npz and PNG plots")
    p.add_argument("--reference", default="f16", help="reference KV cache format (default: f16)")
    p.add_argument(
        "--kv-calib",
        default=None,
        metavar="FILE",
        help="KV calibration sidecar of pca (default: <model>.kvcal.gguf)",
    )
    p.add_argument("-t", "--threads", type=int, default=0, help="threads (default: all, at most 8)")
    p.add_argument("--passkey", action="store_true", help="also run passkey retrieval")
    p.add_argument(
        "--passkey-ctx",
        default=",".join(map(str, PASSKEY_CTX)),
        help="passkey context sizes, capped at the model's training context",
    )
    p.add_argument("--passkey-trials", type=int, default=1, help="keys per context and depth")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main)
    return p


def main(a: argparse.Namespace) -> int:
    try:
        return _main(a)
    except (OSError, RuntimeError, ValueError) as e:
        # Engine errors arrive as RuntimeError with a one-line message.
        print(f"kvrt eval: error: {e}", file=sys.stderr)
        return 1


def _main(a: argparse.Namespace) -> int:
    if a.out:
        require_matplotlib()
    specs = split_specs(a.kv)
    ctxs = parse_ints(a.ctx, "--ctx")
    text = a.text or str(DEFAULT_TEXT)
    if not os.path.isfile(text):
        raise FileNotFoundError(f"text file not found: {text}" + ("" if a.text else " (pass -f)"))
    if a.kv_calib and not os.path.isfile(a.kv_calib):
        raise FileNotFoundError(f"KV calibration file not found: {a.kv_calib}")
    if a.chunks < 0 or a.threads < 0 or a.passkey_trials < 1:
        raise ValueError("--chunks and --threads must be >= 0, --passkey-trials >= 1")
    pk_ctx = parse_ints(a.passkey_ctx, "--passkey-ctx") if a.passkey else None
    report = run(
        a.model,
        specs,
        text,
        ctxs,
        a.chunks,
        a.out,
        a.reference,
        a.threads,
        pk_ctx,
        passkey_trials=a.passkey_trials,
        show_progress=not a.quiet,
        kv_calib=a.kv_calib,
    )
    print(TABLE_HEAD)
    for r in report["results"]:
        print(table_line(r))
    if report["passkey"]:
        print(
            "\npasskey retrieval (greedy, correct / trials):\n" + passkey_table(report["passkey"])
        )
    if a.out:
        print(f"\nreport: {Path(a.out) / 'report.md'}", file=sys.stderr)
    return 0
