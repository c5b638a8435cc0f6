"""`python -m kvrt convert`: a Hugging Face checkpoint folder to one GGUF file.

The output follows llama.cpp's convert_hf_to_gguf.py (metadata keys, tensor names, the Q/K row
permutation of the `llama` rope layout, tokenizer.ggml.*), so llama.cpp loads it too. Tensors are
read lazily from memory-mapped safetensors and written one at a time after the header, so peak
memory stays near the largest tensor; quantization runs in C++ (kvrt._core.quantize_rows).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import _core
from .convert_vocab import ConvertError, write_vocab
from .safetensors_lazy import open_checkpoint

ARCHS = {
    "LlamaForCausalLM": ("llama", True),  # (GGUF architecture, Q/K rows permuted)
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
    "Qwen3ForCausalLM": ("qwen3", False),
}

# --outtype -> (ggml type id, llama_ftype written as general.file_type)
OUTTYPES = {
    "f32": (0, 0),
    "f16": (1, 1),
    "bf16": (30, 32),
    "q4_0": (2, 2),
    "q4_1": (3, 3),
    "q8_0": (8, 7),
}
GGML_F32, GGML_F16 = 0, 1
BLOCK = {0: 1, 1: 1, 30: 1, 2: 32, 3: 32, 8: 32}
GGML_QUANT_VERSION = 2

_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf_name: str) -> str | None:
    """GGUF tensor name of an HF one; None for tensors llama.cpp drops too."""
    if hf_name.endswith(".rotary_emb.inv_freq"):
        return None
    if hf_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[hf_name]
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdecimal():
        if parts[3] in _LAYER_MAP:
            return f"blk.{int(parts[2])}.{_LAYER_MAP[parts[3]]}"
    raise ConvertError(f"tensor '{hf_name}' has no GGUF counterpart for this architecture")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores rotate-half (NEOX) order per head; GGUF `llama` expects interleaved pairs."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _rope_params(cfg: dict) -> dict:
    # transformers >= 5 nests rope settings in rope_parameters; older configs use rope_scaling.
    p = dict(cfg.get("rope_parameters") or {})
    if not p:
        p = dict(cfg.get("rope_scaling") or {})
        if "type" in p and "rope_type" not in p:
            p["rope_type"] = p["type"]
        if cfg.get("rope_theta") is not None:
            p["rope_theta"] = cfg["rope_theta"]
    return p


def _llama3_rope_factors(p: dict, dim: int) -> np.ndarray:
    base = p.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = p.get("factor", 8.0)
    lo, hi = p.get("low_freq_factor", 1.0), p.get("high_freq_factor", 4.0)
    old_ctx = p.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / hi:
            out.append(1.0)
        elif wavelen > old_ctx / lo:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def write_hparams(w, arch: str, cfg: dict, ftype: int, name: str) -> list[tuple[str, np.ndarray]]:
    """Model metadata as llama.cpp writes it; returns extra tensors (llama3 rope factors)."""
    import gguf

    w.add_type("model")
    w.add_name(name)
    w.add_block_count(cfg["num_hidden_layers"])
    if cfg.get("max_position_embeddings") is not None:
        w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    extra = []
    rp = _rope_params(cfg)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    rope_type = rp.get("rope_type")
    if rope_type == "linear" and rp.get("factor") is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rp["factor"])
    elif rope_type == "llama3":
        extra.append(("rope_freqs.weight", _llama3_rope_factors(rp, head_dim)))
    elif rope_type not in (None, "default"):
        raise ConvertError(f"rope scaling type '{rope_type}' is not supported")
    if rp.get("rope_theta") is not None:
        w.add_rope_freq_base(rp["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if cfg.get("head_dim") is not None:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    # Mistral-style sliding window; Qwen2 configs carry a window that is off by default.
    window = cfg.get("sliding_window")
    if window and cfg.get("use_sliding_window", arch == "llama"):
        w.add_sliding_window(int(window))
    w.add_file_type(ftype)
    w.add_quantization_version(GGML_QUANT_VERSION)
    if arch == "llama":
        w.add_vocab_size(cfg["vocab_size"])
        w.add_rope_dimension_count(head_dim)
    return extra


def choose_type(name: str, shape: tuple[int, ...], outtype: int) -> int:
    """llama.cpp's rule: 1-D tensors and norms stay F32, the rest get the output type."""
    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return GGML_F32
    if shape[-1] % BLOCK[outtype] != 0:
        return GGML_F16  # as llama.cpp, when rows are not whole blocks
    return outtype


class Progress:
    """One line on stderr: bytes done, rate and ETA; redrawn at most 10 times a second."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream = max(total, 1), 0, stream
        self.t0 = self.last = time.monotonic()
        self.tty = stream.isatty()

    def update(self, n: int, label: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and (now - self.last > 0.1 or self.done >= self.total):
            self.last = now
            self.stream.write("\r" + self._line(now, label) + "\x1b[K")
            self.stream.flush()

    def _line(self, now: float, label: str) -> str:
        frac = min(self.done / self.total, 1.0)
        el = now - self.t0
        eta = el / frac - el if frac > 0 else 0.0
        bar = "#" * int(frac * 30)
        return (
            f"[{bar:<30}] {frac * 100:5.1f}% {self.done / 2**20:8.1f}/{self.total / 2**20:.1f} "
            f"MiB  {self.done / 2**20 / max(el, 1e-9):6.1f} MiB/s  ETA {eta:5.1f}s  {label}"
        )

    def close(self) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + self._line(now, "") + "\x1b[K\n")
        else:
            self.stream.write(f"converted {self.done / 2**20:.1f} MiB in {now - self.t0:.1f}s\n")
        self.stream.flush()


def _to_output(data: np.ndarray, qtype: int) -> np.ndarray:
    if qtype == GGML_F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    return _core.quantize_rows(qtype, np.ascontiguousarray(data, dtype=np.float32))


# Rows converted per step: bounds the float32 copy of a large tensor (embeddings) to ~32 MiB.
CHUNK_BYTES = 32 * 2**20


class _Streamed:
    """A tensor GGUFWriter.write_tensor_data writes by calling tofile(): converted in chunks of
    rows straight into the file, so no whole-tensor copy exists."""

    def __init__(self, ckpt, src, shape, qtype, n_perm, progress, name):
        self.ckpt, self.src, self.shape, self.qtype = ckpt, src, shape, qtype
        self.n_perm, self.progress, self.name = n_perm, progress, name
        cols = shape[-1] if shape else 1
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        self.nbytes = _core.row_size(qtype, cols) * rows

    def tofile(self, f) -> None:
        rows = self.shape[0] if len(self.shape) > 1 else 1
        row_elems = math.prod(self.shape[1:]) if len(self.shape) > 1 else 1
        # Q/K rows are permuted within heads: those (small) tensors are converted whole.
        step = (
            rows if self.n_perm or len(self.shape) < 2 else max(1, CHUNK_BYTES // (4 * row_elems))
        )
        for r in range(0, rows, step):
            if len(self.shape) < 2:
                data = self.ckpt.load_f32(self.src)
            else:
                data = self.ckpt.load_f32(self.src, r, min(rows, r + step))
            if self.n_perm:
                data = permute_qk(data, self.n_perm)
            blob = _to_output(data, self.qtype)
            del data
            blob.tofile(f)
            self.progress.update(blob.nbytes, self.name)


def load_config(folder: Path) -> dict:
    if not folder.is_dir():
        raise ConvertError(f"{folder}: not a directory")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ConvertError(f"{folder}: no config.json")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConvertError(f"{cfg_path}: {e}") from None
    if "text_config" in cfg and "hidden_size" not in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    return cfg


def convert(folder, out, outtype: str = "f16", force: bool = False, quiet: bool = False) -> Path:
    """Converts the checkpoint in `folder` to `out`; returns the output path."""
    try:
        import gguf
    except ImportError:
        raise ConvertError("convert needs the gguf package: pip install 'kvrt[convert]'") from None

    folder, out = Path(folder), Path(out)
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown --outtype '{outtype}' (choose from {', '.join(OUTTYPES)})")
    qtype, ftype = OUTTYPES[outtype]
    cfg = load_config(folder)
    hf_arch = (cfg.get("architectures") or ["<none>"])[0]
    if hf_arch not in ARCHS:
        raise ConvertError(
            f"architecture '{hf_arch}' is not supported (supported: {', '.join(ARCHS)})"
        )
    arch, permute = ARCHS[hf_arch]
    if out.exists() and not force:
        raise ConvertError(f"{out} exists (use --force to overwrite)")
    ckpt = open_checkpoint(folder)
    n_head = cfg.get("num_attention_heads")  # missing: reported by write_hparams
    n_head_kv = cfg.get("num_key_value_heads") or n_head

    tmp = out.with_name(out.name + ".tmp")
    w = gguf.GGUFWriter(None, arch)
    try:
        try:
            extra = write_hparams(w, arch, cfg, ftype, folder.resolve().name)
        except KeyError as e:
            raise ConvertError(f"{folder}/config.json has no {e}") from None
        write_vocab(w, folder, arch, cfg)

        # Pass 1: names, shapes and output types from the headers only.
        plan = []  # (gguf name, hf name or array, out type)
        for hf_name in ckpt.names():
            name = gguf_name(hf_name)
            if name is None:
                continue
            plan.append((name, hf_name, choose_type(name, ckpt.shape(hf_name), qtype)))
        plan += [(name, arr, GGML_F32) for name, arr in extra]
        plan.sort(key=lambda p: _order_key(p[0]))
        total = 0
        for name, src, t in plan:
            shape = ckpt.shape(src) if isinstance(src, str) else src.shape
            nbytes = _core.row_size(t, shape[-1]) * (math.prod(shape[:-1]) if len(shape) > 1 else 1)
            w.add_tensor_info(
                name, shape, np.dtype(np.float32), nbytes, raw_dtype=gguf.GGMLQuantizationType(t)
            )
            total += nbytes

        # Pass 2: header, then each tensor converted and written on its own.
        w.write_header_to_file(path=tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        progress = Progress(total, stream=open(os.devnull, "w") if quiet else sys.stderr)
        for name, src, t in plan:
            if isinstance(src, str):
                shape = ckpt.shape(src)
                n_perm = 0
                if permute and name.endswith(("attn_q.weight", "attn_k.weight")):
                    n_perm = n_head if "attn_q" in name else n_head_kv
                w.write_tensor_data(_Streamed(ckpt, src, shape, t, n_perm, progress, name))
            else:
                blob = _to_output(src, t)
                w.write_tensor_data(blob)
                progress.update(blob.nbytes, name)
        progress.close()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        # Ctrl-C or any failure: no half-written file is left behind under either name.
        try:
            w.close()
        finally:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        ckpt.close()
    return out


def _order_key(name: str):
    # llama.cpp's order: globals first (rope_freqs, token_embd), blocks in order, then output.
    if name.startswith("blk."):
        return (1, int(name.split(".")[1]), 0)
    if name in ("output_norm.weight", "output.weight"):
        return (2, 0, 0 if name == "output_norm.weight" else 1)
    return (0, 0, 0)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert",
        help="convert a Hugging Face checkpoint folder to GGUF",
        description="Convert a Hugging Face checkpoint (config.json, *.safetensors, "
        "tokenizer files) to one GGUF file llama.cpp and kvrt load.",
    )
    p.add_argument("model", type=Path, help="folder holding config.json and *.safetensors")
    p.add_argument("-o", "--outfile", type=Path, required=True, help="output .gguf path")
    p.add_argument(
        "--outtype",
        choices=list(OUTTYPES),
        default="f16",
        help="type of the 2-D weights (default f16); norms and biases stay f32",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main)
    return p


def main(args: argparse.Namespace) -> int:
    try:
        out = convert(args.model, args.outfile, args.outtype, args.force, args.quiet)
    except ConvertError as e:
        print(f"kvrt convert: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"kvrt convert: error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
    return 0
