"""python -m kvrt eval and kvrt-cli bench per KV format, checked against direct computations
on the real model: every number of the report is recomputed here from Model.eval logits."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import TESTDATA, run_cli

kvrt = pytest.importorskip("kvrt")
from kvrt import _core  # noqa: E402
from kvrt import eval as kvrt_eval  # noqa: E402

EXCERPT = TESTDATA / "shakespeare_excerpt.txt"
N_CTX, N_CHUNKS = 256, 2
FORMATS = ["f16", "f32"]


@pytest.fixture(scope="module")
def report(model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-report")
    rep = kvrt_eval.run(
        str(model_path),
        FORMATS,
        str(EXCERPT),
        [N_CTX],
        N_CHUNKS,
        str(out),
        n_threads=2,
        show_progress=False,
    )
    return rep, out


@pytest.fixture(scope="module")
def direct(model_path):
    """Logits of the scored rows of each chunk, per format, from Model.eval with the
    same chunking (the first half evaluated before the scored rows)."""
    tok = kvrt.Model(str(model_path), n_ctx=64, n_threads=1)
    tokens = tok.tokenize(EXCERPT.read_text(), True, False)
    first = N_CTX // 2
    # llama-perplexity puts BOS first in each chunk when the tokenizer adds one.
    add_bos = len(tok.tokenize("a", True, False)) > len(tok.tokenize("a", False, False))
    out = {"targets": []}
    for fmt in FORMATS:
        m = kvrt.Model(str(model_path), n_ctx=N_CTX, n_threads=2, kv=fmt)
        out[fmt] = []
        for c in range(N_CHUNKS):
            chunk = tokens[c * N_CTX : (c + 1) * N_CTX]
            m.reset()
            m.eval(([tok.bos_id] if add_bos else chunk[:1]) + chunk[1:first], logits_all=False)
            out[fmt].append(np.array(m.eval(chunk[first:])[: N_CTX - 1 - first], dtype=np.float64))
            if fmt == FORMATS[0]:
                out["targets"].append(np.array(chunk[first + 1 :]))
        out[f"{fmt}/kv_bytes"] = m.kv_bytes
    out["tokens"] = tokens
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _row(rep: dict, fmt: str) -> dict:
    return next(r for r in rep["results"] if r["format"] == fmt and r["ctx"] == N_CTX)


def test_perplexity_equals_numpy_from_logits(report, direct, model_path):
    rep, _ = report
    for fmt in FORMATS:
        logp = np.concatenate(
            [_log_softmax(z)[np.arange(len(t)), t] for z, t in zip(direct[fmt], direct["targets"])]
        )
        np.testing.assert_allclose(rep["arrays"][f"ctx{N_CTX}/{fmt}/logp"], logp, atol=2e-5)
        r = _row(rep, fmt)
        assert r["n_scored"] == len(logp) == N_CHUNKS * (N_CTX - 1 - N_CTX // 2)
        assert r["ppl"] == pytest.approx(np.exp(-logp.mean()), rel=1e-6)
        sd = np.sqrt(np.mean(logp**2) - logp.mean() ** 2)
        assert r["ppl_err"] == pytest.approx(sd / np.sqrt(len(logp) - 1) * r["ppl"], rel=1e-4)
    # The same chunking as kvrt-cli perplexity / Model.perplexity.
    m = kvrt.Model(str(model_path), n_ctx=N_CTX, n_threads=2, kv="f16")
    assert m.perplexity(direct["tokens"], N_CHUNKS)["ppl"] == pytest.approx(
        _row(rep, "f16")["ppl"], rel=1e-9
    )
    ref = _row(rep, "f16")["ppl"]
    assert _row(rep, "f32")["dppl_pct"] == pytest.approx(100 * (_row(rep, "f32")["ppl"] / ref - 1))


def test_kl_and_top1_equal_numpy(report, direct):
    rep, _ = report
    kl, top1 = [], []
    for zr, zt in zip(direct["f16"], direct["f32"]):
        lr, lt = _log_softmax(zr), _log_softmax(zt)
        kl.append((np.exp(lr) * (lr - lt)).sum(axis=1))
        top1.append(zr.argmax(axis=1) == zt.argmax(axis=1))
        np.testing.assert_allclose(
            _core.eval_kl(zr.astype(np.float32), zt.astype(np.float32)),
            kl[-1],
            rtol=1e-3,
            atol=1e-9,
        )
    kl, top1 = np.concatenate(kl), np.concatenate(top1)
    r = _row(rep, "f32")
    assert kl.mean() > 0  # f16 rounding of keys and values does move the distribution
    np.testing.assert_allclose(rep["arrays"][f"ctx{N_CTX}/f32/kl"], kl, rtol=1e-3, atol=1e-9)
    assert r["kl_mean"] == pytest.approx(kl.mean(), rel=1e-3)
    assert r["top1_pct"] == pytest.approx(100 * top1.mean())
    f16 = _row(rep, "f16")
    assert f16["kl_mean"] == 0 and f16["top1_pct"] == 100 and f16["attn_rel_err"] == 0


def test_bits_from_allocator(report, direct, model_path):
    rep, _ = report
    md = kvrt.Model(str(model_path), n_ctx=64).metadata
    n_layer, n_head = md["llama.block_count"], md["llama.attention.head_count"]
    n_kv, dim = md["llama.attention.head_count_kv"], md["llama.embedding_length"]
    elements = N_CTX * n_layer * 2 * n_kv * (dim // n_head)
    for fmt in FORMATS:
        r = _row(rep, fmt)
        assert r["kv_bytes"] == direct[f"{fmt}/kv_bytes"]
        assert r["bits_per_element"] == pytest.approx(8 * r["kv_bytes"] / elements)
        assert r["kv_bytes_per_token"] == pytest.approx(r["kv_bytes"] / N_CTX)
    assert _row(rep, "f16")["bits_per_element"] == pytest.approx(16)
    err = _row(rep, "f32")["attn_rel_err_per_layer"]
    assert len(err) == n_layer and all(0 < e < 0.01 for e in err)


def test_report_files(report):
    rep, out = report
    saved = json.loads((out / "report.json").read_text())
    assert {(r["format"], r["ctx"]) for r in saved["results"]} == {(f, N_CTX) for f in FORMATS}
    assert saved["results"] == json.loads(json.dumps(rep["results"]))
    md = (out / "report.md").read_text()
    for fmt in FORMATS:
        assert f"| {fmt} | {N_CTX} |" in md
    arrays = np.load(out / "report.npz")
    assert arrays[f"ctx{N_CTX}/f32/kl"].shape == (N_CHUNKS * (N_CTX - 1 - N_CTX // 2),)
    import matplotlib.image

    for name in ("ppl_vs_bits.png", "attn_error_per_layer.png"):
        img = matplotlib.image.imread(out / name)
        assert img.shape[0] > 300 and img.shape[1] > 500
        # Drawn content: many pixels differ from the white background.
        assert (img[..., :3].mean(axis=2) < 0.9).mean() > 0.01, name


def test_cli_table_and_errors(model_path, tmp_path):
    py = [sys.executable, "-m", "kvrt", "eval", str(model_path), "-f", str(EXCERPT), "-q"]
    r = subprocess.run(
        [*py, "--kv", "f16,q9", "--ctx", "64", "--chunks", "1"], capture_output=True, text=True
    )
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "unknown KV cache format 'q9'" in r.stderr
    r = subprocess.run([*py, "--ctx", "100000"], capture_output=True, text=True)
    assert r.returncode == 1 and "tokens; at least" in r.stderr, r.stderr
    r = subprocess.run(
        [*py, "--ctx", "64", "--chunks", "1", "--kv", "f32", "-t", "2"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    lines = [s for s in r.stdout.splitlines() if s.startswith("| f32 | 64 |")]
    assert len(lines) == 1 and lines[0].count("|") == 10


def test_passkey_prompt_and_run(model_path):
    m = kvrt.Model(str(model_path), n_ctx=512, n_threads=2)
    for depth in (0.0, 0.5, 1.0):
        ids = kvrt_eval.passkey_prompt(m, 500, depth, 12345)
        assert 450 < len(ids) <= 500
        text = m.detokenize(ids)
        at = text.index("The pass key is 12345")
        assert abs(at / len(text) - depth) < 0.1, (depth, at / len(text))
        assert text.endswith("What is the pass key? The pass key is")
    res = kvrt_eval.passkey(str(model_path), ["f16"], [384], depths=(0.0, 1.0), n_threads=2)
    assert [(r["ctx"], r["depth"]) for r in res] == [(384, 0.0), (384, 1.0)]
    for r in res:
        (key,), (answer,) = r["keys"], r["answers"]
        assert 10000 <= key <= 99999 and answer.strip()
        assert r["correct"] == int(answer.strip().startswith(str(key)))
        # Greedy: the same prompt gives the same answer again.
        prompt = kvrt_eval.passkey_prompt(m, 384 - 8, r["depth"], key)
        assert m.generate(prompt, max_tokens=8, temperature=0.0) == answer


def test_bench_formats_json_csv(cli, model_path):
    args = ["bench", "-m", model_path, "-p", 16, "-n", 2, "-r", 1, "-t", 2]
    r = run_cli(cli, *args, "--kv", "f16,f32", "-o", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["kv"], x["test"]) for x in rows] == [
        ("f16", "pp16"),
        ("f16", "tg2"),
        ("f32", "pp16"),
        ("f32", "tg2"),
    ]
    assert rows[2]["kv_bytes"] == 2 * rows[0]["kv_bytes"] > 0
    assert all(x["avg_ts"] > 0 and len(x["samples_ts"]) == 1 for x in rows)
    assert rows[0]["kv_bytes_per_token"] == pytest.approx(rows[0]["kv_bytes"] / rows[0]["n_ctx"])

    r = run_cli(cli, *args, "-ctk", "f16", "-ctk", "f32", "-ctv", "f16", "-o", "csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(x["type_k"], x["type_v"], x["kv"]) for x in rows][::2] == [
        ("f16", "f16", "f16"),
        ("f32", "f16", "k=f32,v=f16"),
    ]
    assert float(rows[2]["bits_per_element"]) == pytest.approx(24.0)

    r = run_cli(cli, *args, "--kv", "f32")
    assert r.returncode == 0, r.stderr
    assert "| f32 |" in r.stdout and "KV bytes" in r.stdout
    r = run_cli(cli, *args, "--kv", "f16,q9")
    assert r.returncode != 0 and "unknown KV cache format 'q9'" in r.stderr
    r = run_cli(cli, *args, "-o", "xml")
    assert r.returncode != 0 and "unknown output format 'xml'" in r.stderr
