"""Text generation: kvrt-cli run and kvrt.Model.generate on the real model."""

from __future__ import annotations

import re

import pytest
from conftest import run_cli

PROMPT = "The capital of France is"
# A chat prompt the model answers in Japanese: most characters take two or
# three byte-fallback tokens, so pieces must wait for whole characters.
JAPANESE = "<|im_start|>user\nWrite a sentence in Japanese.<|im_end|>\n<|im_start|>assistant\n"
STORY = "<|im_start|>user\nTell me a story about a dragon.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model(model_path):
    kvrt = pytest.importorskip("kvrt")
    return kvrt.Model(model_path, n_ctx=512)


# -- kvrt-cli run -------------------------------------------------------------


def test_run_greedy_paris(cli, model_path):
    r = run_cli(cli, "run", "-m", model_path, "-p", PROMPT, "-n", 8, "--temp", 0, "-t", 2)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert re.search(r"^prompt: 5 tokens in [0-9.]+ s \([0-9.]+ tokens/s\)$", r.stderr, re.M)
    assert re.search(
        r"^generation: 8 tokens, 7 decoded in [0-9.]+ s \([0-9.]+ tokens/s\)$", r.stderr, re.M
    )
    assert re.search(r"^KV cache: \d+ bytes, 16\.00 bits/element \(f16\)$", r.stderr, re.M)
    assert re.search(r"^peak memory: [0-9.]+ MiB$", r.stderr, re.M)


def test_run_matches_python(cli, model_path, model):
    r = run_cli(
        cli,
        "run",
        "-m",
        model_path,
        "-p",
        STORY,
        "-n",
        16,
        "-s",
        7,
        "--stop",
        "\n\n",
        "--stop",
        "zzz",
        "-t",
        2,
    )
    assert r.returncode == 0, r.stderr
    text = model.generate(STORY, max_tokens=16, seed=7, stop=["\n\n", "zzz"])
    assert r.stdout == text + "\n"


def test_run_context_full(cli, model_path):
    r = run_cli(cli, "run", "-m", model_path, "-p", PROMPT, "-n", -1, "-c", 16, "--temp", 0)
    assert r.returncode == 0, r.stderr
    assert "the context is full (16 tokens)" in r.stderr
    assert "generation: 12 tokens" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["-p", PROMPT * 10, "-c", "16"], "longer than the context (-c 16)"),
        (["-p", PROMPT, "-n", "-5"], "out of range"),
        (["-p", PROMPT, "-c", "0"], "out of range"),
        (["-p", PROMPT, "--bogus"], "unknown option '--bogus'"),
        ([], "give a prompt"),
        (["-p", PROMPT, "--temp", "warm"], "not a number"),
        (["-p", PROMPT, "--stop"], "needs a value"),
    ],
)
def test_run_bad_input(cli, model_path, args, message):
    r = run_cli(cli, "run", "-m", model_path, *args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert message in lines[0]
    assert r.stdout == ""


def test_run_help(cli):
    r = run_cli(cli, "run", "--help")
    assert r.returncode == 0
    for flag in [
        "--temp",
        "--top-k",
        "--top-p",
        "--min-p",
        "--repeat-penalty",
        "--repeat-last-n",
        "--seed",
        "--stop",
        "-ctk",
    ]:
        assert flag in r.stdout


# -- kvrt.Model.generate ------------------------------------------------------


def test_greedy_matches_transformers(model, model_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ids = model.tokenize(PROMPT, True, True)
    ours = model.generate_tokens(ids, 32, temperature=0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32
    )
    x = torch.tensor([ids])
    with torch.no_grad():
        out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=32)
    # Both stop at <|im_end|> (id 2) and include it.
    assert ours == out[0, len(ids) :].tolist()


def test_stream_equals_text(model):
    pieces = list(model.generate(STORY, max_tokens=24, seed=3, stream=True))
    assert len(pieces) > 1
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == model.generate(STORY, max_tokens=24, seed=3)


def test_seed(model):
    a = model.generate(STORY, max_tokens=24, temperature=1.0, seed=1)
    b = model.generate(STORY, max_tokens=24, temperature=1.0, seed=1)
    c = model.generate(STORY, max_tokens=24, temperature=1.0, seed=2)
    assert a == b
    assert a != c


def test_top_k_1_is_greedy(model):
    greedy = model.generate_tokens(STORY, 16, temperature=0)
    assert model.generate_tokens(STORY, 16, temperature=1.5, top_k=1, seed=5) == greedy


def test_repeat_penalty_changes_output(model):
    plain = model.generate_tokens(STORY, 32, temperature=0)
    penalised = model.generate_tokens(STORY, 32, temperature=0, repeat_penalty=1.5)
    assert plain != penalised


def test_stop_string(model):
    text = model.generate(PROMPT, max_tokens=12, temperature=0)
    assert text.startswith(" Paris.\n\nThe answer is")
    # "swer is" spans tokens (" answer", " is"): held back until it matches.
    for stop in ["swer is", ".", ["zzz", "\n\n"], "Paris"]:
        stops = [stop] if isinstance(stop, str) else stop
        cut = min(text.index(s) for s in stops if s in text)
        assert model.generate(PROMPT, max_tokens=12, temperature=0, stop=stop) == text[:cut]
        streamed = model.generate(PROMPT, max_tokens=12, temperature=0, stop=stop, stream=True)
        assert "".join(streamed) == text[:cut]
    # A stop string that never completes: the held-back prefix is released.
    assert model.generate(PROMPT, max_tokens=12, temperature=0, stop="Paris!") == text


def test_utf8_pieces(model):
    ids = model.generate_tokens(JAPANESE, 24, temperature=0)
    pieces = list(model.generate(JAPANESE, max_tokens=24, temperature=0, stream=True))
    text = "".join(pieces)
    assert any(ord(ch) > 0x3000 for ch in text), text
    # Characters span tokens, so there are fewer pieces than tokens, and each
    # piece is whole characters (no replacement characters).
    assert len(pieces) < len(ids)
    for p in pieces:
        assert isinstance(p, str)
        p.encode("utf-8")
        assert "\ufffd" not in p


def test_context_full_and_max_tokens(model_path):
    kvrt = pytest.importorskip("kvrt")
    m = kvrt.Model(model_path, n_ctx=16)
    assert len(m.generate_tokens(PROMPT, -1, temperature=0)) == 12
    assert m.generate(PROMPT, max_tokens=0) == ""
    with pytest.raises(Exception, match="context has room for 16"):
        m.generate(PROMPT * 10)


def test_interrupted_generation_leaves_model_usable(model):
    expected = model.generate(STORY, max_tokens=16, temperature=0)
    it = model.generate(STORY, max_tokens=64, temperature=0, stream=True)
    next(it)
    next(it)
    # As after KeyboardInterrupt in a loop: the iterator is abandoned.
    assert model.generate(STORY, max_tokens=16, temperature=0) == expected
    with pytest.raises(Exception, match="superseded"):
        next(it)


def test_keyboard_interrupt_leaves_model_usable(model):
    import os
    import signal
    import threading

    expected = model.generate(PROMPT, max_tokens=8, temperature=0)
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    n = 0
    with pytest.raises(KeyboardInterrupt):
        # Runs until the 512-token context is full: far longer than 0.3 s
        # after the first piece (the timer starts once the prompt is in).
        for _ in model.generate(STORY, max_tokens=-1, temperature=0, stream=True):
            if n == 0:
                timer.start()
            n += 1
    timer.join()
    assert 0 < n
    assert model.generate(PROMPT, max_tokens=8, temperature=0) == expected
