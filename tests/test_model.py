"""The forward pass on the real model against transformers' float32 reference."""

from __future__ import annotations

import kvrt
import numpy as np
import pytest
from conftest import text_file


def _kl_and_top1(ref: np.ndarray, ours: np.ndarray) -> tuple[float, float]:
    """Mean KL(ref || ours) of the next-token distributions, and top-1 agreement."""
    ref = ref.astype(np.float64)
    ours = ours.astype(np.float64)
    lp = ref - ref.max(-1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    lq = ours - ours.max(-1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(-1, keepdims=True))
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    top1 = (ref.argmax(-1) == ours.argmax(-1)).mean()
    return float(kl.mean()), float(top1)


@pytest.fixture(scope="module")
def tokens(model_path):
    m = kvrt.Model(model_path, n_ctx=1024, n_threads=2)
    text = text_file("shakespeare_excerpt.txt").read_text(encoding="utf-8")[:20000]
    ids = m.tokenize(text)
    assert len(ids) >= 600
    return ids[:600]


@pytest.fixture(scope="module")
def reference_logits(model_path, tokens):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name, torch_dtype=torch.float32
    )
    hf.eval()
    with torch.no_grad():
        out = hf(torch.tensor([tokens])).logits[0].numpy()
    return out


def test_logits_match_transformers(model_path, tokens, reference_logits):
    m = kvrt.Model(model_path, n_ctx=1024, n_threads=2)
    ours = m.eval(tokens)
    assert ours.shape == reference_logits.shape
    kl, top1 = _kl_and_top1(reference_logits, ours)
    print(f"positions={len(tokens)} KL={kl:.3e} top1={top1:.4f}")
    assert top1 >= 0.99
    assert kl < 1e-3


def test_incremental_decode_equals_batch(model_path, tokens):
    """Prefill in one batch vs. a prefix plus token-by-token decode: same logits."""
    n = 40
    a = kvrt.Model(model_path, n_ctx=256, n_threads=2)
    full = a.eval(tokens[:n])
    b = kvrt.Model(model_path, n_ctx=256, n_threads=2, n_batch=7)
    part = [b.eval(tokens[:20])]
    for t in tokens[20:n]:
        part.append(b.eval([t]))
    step = np.concatenate(part)
    assert b.n_past == n
    kl, top1 = _kl_and_top1(full, step)
    assert top1 == 1.0
    assert kl < 1e-5


def test_threads_agree(model_path, tokens):
    one = kvrt.Model(model_path, n_ctx=128, n_threads=1).eval(tokens[:64])
    two = kvrt.Model(model_path, n_ctx=128, n_threads=2).eval(tokens[:64])
    np.testing.assert_allclose(one, two, rtol=0, atol=1e-3)


def test_f32_and_f16_cache(model_path, tokens):
    f16 = kvrt.Model(model_path, n_ctx=256, kv="f16")
    f32 = kvrt.Model(model_path, n_ctx=256, kv="f32")
    assert f32.kv_bytes == 2 * f16.kv_bytes
    assert f16.kv_bits_per_element == pytest.approx(16.0)
    kl, top1 = _kl_and_top1(f32.eval(tokens[:200]), f16.eval(tokens[:200]))
    assert kl < 1e-4 and top1 >= 0.99


def test_context_overflow_and_bad_tokens(model_path):
    m = kvrt.Model(model_path, n_ctx=16)
    with pytest.raises(RuntimeError, match="do not fit the context of 16"):
        m.eval(list(range(1, 18)))
    with pytest.raises(RuntimeError, match="out of range"):
        m.eval([m.n_vocab])
    m.eval([1, 2, 3])
    m.reset()
    assert m.n_past == 0


def test_model_metadata_and_tokens(model_path):
    m = kvrt.Model(model_path, n_ctx=64)
    assert m.metadata["general.architecture"] == "llama"
    assert m.n_vocab == 49152
    ids = m.tokenize("The capital of France is Paris.")
    assert m.detokenize(ids) == "The capital of France is Paris."


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        kvrt.Model(tmp_path / "nope.gguf")


def test_perplexity_protocol_matches_direct_computation(model_path, tokens):
    """Model.perplexity equals llama-perplexity's protocol computed here from raw logits."""
    n_ctx = 128
    m = kvrt.Model(model_path, n_ctx=n_ctx, n_threads=2)
    r = m.perplexity(tokens[: 3 * n_ctx + 5], n_chunks=0)
    assert r["n_chunks"] == 3
    nll = []
    for c in range(3):
        chunk = tokens[c * n_ctx : (c + 1) * n_ctx]
        m.reset()
        logits = m.eval(chunk).astype(np.float64)
        lp = logits - logits.max(-1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
        for j in range(n_ctx // 2, n_ctx - 1):
            nll.append(-lp[j, chunk[j + 1]])
    nll = np.array(nll)
    assert r["n_scored"] == len(nll)
    ppl = np.exp(nll.mean())
    assert r["ppl"] == pytest.approx(ppl, rel=1e-6)
    err = np.sqrt((np.mean(nll**2) - nll.mean() ** 2) / (len(nll) - 1)) * ppl
    assert r["ppl_err"] == pytest.approx(err, rel=1e-4)
