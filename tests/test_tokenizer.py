"""Tokenizer: token ids identical to Hugging Face / SentencePiece on real text.

- SmolLM2 (byte-level BPE, pre-tokenizer "smollm") against transformers loading the
  tokenizer from the same GGUF, with the original SmolLM2 pre-tokenizer restored (see
  test_transformers_gguf_drops_smollm_digit_split).
- The llama-bpe / qwen2 / gpt2 pre-tokenizers on GGUFs carrying SmolLM2's vocabulary,
  against a `tokenizers` Tokenizer built with the corresponding regex.
- SentencePiece ("llama" model) against a sentencepiece BPE model trained here.
"""

from __future__ import annotations

import copy
import json
import random
import shutil

import pytest
from conftest import text_file

core = pytest.importorskip("kvrt._core")
tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("gguf")
import tokenizer_ref as ref  # noqa: E402
from tokenizers import Regex, decoders, models  # noqa: E402
from tokenizers import pre_tokenizers as pt  # noqa: E402

CONTROL, USER_DEFINED, BYTE = 3, 4, 6


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return ref.text_chunks(50, 2000, text_file) + ref.CRAFTED


@pytest.fixture(scope="module")
def smol(model_path):
    return core.Tokenizer(str(model_path))


@pytest.fixture(scope="module")
def hf_gguf(model_path):
    """transformers' tokenizer converted from the GGUF itself."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        str(model_path.parent), gguf_file=model_path.name
    )


@pytest.fixture(scope="module")
def hf_smollm(hf_gguf):
    """The original SmolLM2 pipeline: digits isolated one by one, then GPT-2's
    ByteLevel regex (what llama.cpp's "smollm" pre-tokenizer stands for)."""
    tok = copy.deepcopy(hf_gguf.backend_tokenizer)
    tok.pre_tokenizer = pt.Sequence(
        [pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    return tok


def first_mismatch(got: list[int], want: list[int]) -> str:
    i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return f"first difference at {i}: kvrt {got[i:i + 6]} reference {want[i:i + 6]}"


def assert_same_ids(encode_kvrt, encode_ref, texts: list[str]) -> None:
    bad = []
    for t in texts:
        got, want = encode_kvrt(t), encode_ref(t)
        if got != want:
            bad.append(f"{t[:60]!r}: {first_mismatch(got, want)}")
    assert not bad, f"{len(bad)} of {len(texts)} strings differ:\n" + "\n".join(bad[:5])


# --- pre-tokenizer splitters -------------------------------------------------------------

SPLITTERS = {
    "gpt2": lambda: pt.Split(Regex(ref.GPT2_REGEX), behavior="isolated"),
    "smollm": lambda: pt.Sequence(
        [pt.Digits(individual_digits=True), pt.Split(Regex(ref.GPT2_REGEX), behavior="isolated")]
    ),
    "llama3": lambda: pt.Split(Regex(ref.LLAMA3_REGEX), behavior="isolated"),
    "qwen2": lambda: pt.Split(Regex(ref.QWEN2_REGEX), behavior="isolated"),
}

# Characters on the edges of the regex classes: \s beyond ASCII, \p{N} beyond 0-9,
# combining marks and joiners, contraction letters in both cases.
FUZZ_ALPHABET = list(
    " \t\n\r\x0b\x0c\x1c\x85\xa0\u2000\u3000\u2028aZzéÉß中😀'sStTlLmMdDrReEvV.,!?-_$19٣²½Ⅻ"
    "\u0301\u200d\u200b\ufeff"
) + ["'s", "'LL", "  ", "\n\n", " \n "]


@pytest.mark.parametrize("kind", sorted(SPLITTERS))
def test_pretokenize_matches_hf_regex(kind, texts):
    rng = random.Random(kind)
    fuzz = [
        "".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(1, 40)))
        for _ in range(3000)
    ]
    splitter = SPLITTERS[kind]()
    bad = []
    for t in texts + fuzz:
        want = [s for s, _ in splitter.pre_tokenize_str(t)]
        got = core.pretokenize(t, kind)
        if got != want:
            bad.append(f"{t[:60]!r}: kvrt {got[:8]} hf {want[:8]}")
    assert not bad, f"{len(bad)} strings split differently:\n" + "\n".join(bad[:5])


@pytest.mark.parametrize("kind", ["gpt2", "llama3"])
def test_pretokenize_every_code_point(kind):
    """All of Unicode in one string: letter, number and space classes agree with
    the regex engine of Hugging Face tokenizers (Unicode 16.0) for every code point."""
    text = "".join(chr(c) for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000)
    want = [s for s, _ in SPLITTERS[kind]().pre_tokenize_str(text)]
    assert core.pretokenize(text, kind) == want


# --- SmolLM2, the real model ----------------------------------------------------------

def test_smollm2_metadata(smol):
    assert smol.n_vocab == 49152
    assert (smol.bos_id, smol.eos_id) == (1, 2)  # <|im_start|>, <|im_end|>
    assert smol.is_eog(2) and smol.is_eog(0)  # <|im_end|> (eos), <|endoftext|> (by text)
    assert not smol.is_eog(1) and not smol.is_eog(100)
    # tokenizer.ggml.add_bos_token is false in this file: nothing is added.
    assert smol.encode("Hi", add_special=True) == smol.encode("Hi", add_special=False)


def test_smollm2_matches_hf(smol, hf_smollm, texts):
    assert_same_ids(
        lambda t: smol.encode(t, add_special=False),
        lambda t: hf_smollm.encode(t, add_special_tokens=False).ids,
        texts,
    )


def test_smollm2_roundtrip(smol, hf_smollm, texts):
    for t in texts:
        ids = smol.encode(t, add_special=False)
        assert smol.decode(ids) == t
        assert smol.decode(ids) == hf_smollm.decode(ids, skip_special_tokens=False)


def test_transformers_gguf_drops_smollm_digit_split(smol, hf_gguf, hf_smollm):
    """transformers' GGUF converter has no split for tokenizer.ggml.pre == "smollm"
    (integrations/gguf/gguf_tokenizer_mapping.py, GGUF_PRE_TOKENIZER_SPLITS) and
    falls back to GPT-2's regex without SmolLM2's Digits(individual_digits) step.
    The ids differ where whitespace precedes a digit: "x  1" is x,"  ",1 in the
    original tokenizer but x," "," 1"->" ","1" there. kvrt follows the original."""
    for t in ["x  1", "a\n\n 2024", "x   12"]:
        want = hf_smollm.encode(t, add_special_tokens=False).ids
        assert smol.encode(t, add_special=False) == want
        assert hf_gguf.encode(t, add_special_tokens=False) != want
    # Without that pattern the converted tokenizer agrees.
    t = "Hello world 12345, it's 3.14 and x 1"
    assert smol.encode(t, add_special=False) == hf_gguf.encode(t, add_special_tokens=False)


CHAT = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat's 12*34?<|im_end|>\n"


def test_smollm2_special_tokens(smol, hf_smollm):
    ids = smol.encode(CHAT, add_special=False, parse_special=True)
    assert ids == hf_smollm.encode(CHAT, add_special_tokens=False).ids
    assert ids[0] == 1 and ids.count(2) == 2
    assert smol.decode(ids, render_special=True) == CHAT
    assert smol.decode(ids) == CHAT.replace("<|im_start|>", "").replace("<|im_end|>", "")
    # Without parse_special the markers are plain text.
    plain = copy.deepcopy(hf_smollm)
    plain.encode_special_tokens = True
    ids = smol.encode(CHAT, add_special=False, parse_special=False)
    assert ids == plain.encode(CHAT, add_special_tokens=False).ids
    assert 1 not in ids and 2 not in ids
    assert smol.decode(ids) == CHAT


def test_smollm2_token_to_piece(smol, hf_smollm):
    assert smol.token_to_piece(hf_smollm.token_to_id("Ġthe")) == b" the"
    assert smol.token_to_piece(2) == b"<|im_end|>"
    # Byte-level tokens of partial UTF-8 sequences come back as raw bytes.
    ids = smol.encode("中", add_special=False)
    assert b"".join(smol.token_to_piece(i) for i in ids) == "中".encode()
    assert smol.token_to_piece(-1) == b"" and smol.token_to_piece(10**6) == b""


# --- llama-bpe / qwen2 / gpt2 pre-tokenizers on SmolLM2's vocabulary -------------------

@pytest.fixture(scope="module")
def smol_vocab(hf_gguf):
    model = json.loads(hf_gguf.backend_tokenizer.to_str())["model"]
    vocab = model["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    special = [t for t in hf_gguf.all_special_tokens]
    return tokens, vocab, merges, special


PRE_REGEX = {
    "llama-bpe": ref.LLAMA3_REGEX,
    "qwen2": ref.QWEN2_REGEX,
    "gpt2": ref.GPT2_REGEX,
    "default": ref.GPT2_REGEX,
}


@pytest.mark.parametrize("pre", sorted(PRE_REGEX))
def test_bpe_pretokenizer_matches_hf(pre, smol_vocab, texts, tmp_path):
    tokens, vocab, merges, special = smol_vocab
    types = [CONTROL if t in special else 1 for t in tokens]
    path = ref.write_bpe_gguf(
        tmp_path / f"{pre}.gguf", pre, tokens, types, [" ".join(m) for m in merges], eos=2
    )
    tok = core.Tokenizer(str(path))

    # Llama 3's tokenizer.json sets ignore_merges: a pre-token that is a token stays whole.
    want = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=merges, ignore_merges=pre == "llama-bpe")
    )
    want.pre_tokenizer = pt.Sequence(
        [
            pt.Split(Regex(PRE_REGEX[pre]), behavior="isolated"),
            pt.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    want.decoder = decoders.ByteLevel()
    want.add_special_tokens(special)

    assert_same_ids(
        lambda t: tok.encode(t, add_special=False, parse_special=True),
        lambda t: want.encode(t, add_special_tokens=False).ids,
        texts + [CHAT],
    )
    for t in texts:
        assert tok.decode(tok.encode(t)) == t


def test_unknown_pretokenizer_is_rejected(tmp_path):
    path = ref.write_bpe_gguf(tmp_path / "bad.gguf", "no-such-pre", ["a", "b", "ab"], [1] * 3,
                              ["a b"])
    with pytest.raises(RuntimeError, match="no-such-pre"):
        core.Tokenizer(str(path))


# --- SentencePiece ---------------------------------------------------------------------

SPM_USER = "<|user|>"


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    """A BPE SentencePiece model trained on ~200 KB of Shakespeare, its GGUF and kvrt."""
    sentencepiece = pytest.importorskip("sentencepiece")
    d = tmp_path_factory.mktemp("spm")
    train = d / "train.txt"
    train.write_text(text_file("tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000])
    sentencepiece.SentencePieceTrainer.train(
        input=str(train),
        model_prefix=str(d / "m"),
        vocab_size=1500,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        # Llama's settings: no normalization, whitespace kept as written.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        user_defined_symbols=[SPM_USER],
        num_threads=4,
        minloglevel=2,
    )
    sp = sentencepiece.SentencePieceProcessor(model_file=str(d / "m.model"))
    n = sp.get_piece_size()

    def piece_type(i: int) -> int:
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return CONTROL
        if sp.is_byte(i):
            return BYTE
        if sp.is_unused(i):
            return 5
        return USER_DEFINED if sp.id_to_piece(i) == SPM_USER else 1

    path = ref.write_spm_gguf(
        d / "spm.gguf",
        [sp.id_to_piece(i) for i in range(n)],
        [sp.get_score(i) for i in range(n)],
        [piece_type(i) for i in range(n)],
    )
    return sp, core.Tokenizer(str(path)), d / "m.model"


def test_spm_matches_sentencepiece(spm, texts):
    sp, tok, _ = spm
    extra = [f"{SPM_USER}hello", f"Hi {SPM_USER} there{SPM_USER}{SPM_USER}!", SPM_USER]
    assert_same_ids(lambda t: tok.encode(t, add_special=False), sp.encode, texts + extra)
    # Unicode beyond Shakespeare's characters goes through <0xXX> byte tokens.
    ids = tok.encode("naïve 中文 😀", add_special=False)
    assert sum(sp.is_byte(i) for i in ids) >= 10


def test_spm_defaults_and_decode(spm, texts):
    sp, tok, _ = spm
    # No BOS/EOS/add-BOS keys in the file: llama.cpp's defaults.
    assert (tok.bos_id, tok.eos_id) == (1, 2) == (sp.bos_id(), sp.eos_id())
    assert tok.encode("To be", add_special=True) == [1] + sp.encode("To be")
    assert tok.is_eog(2) and not tok.is_eog(1)
    for t in texts:
        ids = tok.encode(t, add_special=True)
        assert tok.decode(ids) == t == sp.decode(ids[1:])
    assert tok.token_to_piece(sp.piece_to_id("<0x41>")) == b"A"
    assert tok.token_to_piece(sp.piece_to_id("\u2581the")) == b" the"
    assert tok.decode([1], render_special=True) == "<s>"


def test_spm_parse_special(spm):
    """Control tokens split the text when parse_special; the text after one gets
    the space prefix again (llama.cpp, and Llama 2's Prepend normalizer)."""
    sp, tok, _ = spm
    ids = tok.encode("To be<s>or not</s>", add_special=False, parse_special=True)
    assert ids == sp.encode("To be") + [1] + sp.encode("or not") + [2]
    assert tok.encode("<s>", add_special=False) == sp.encode("<s>")  # plain text otherwise
    assert tok.decode(ids, render_special=True) == "To be<s> or not</s>"


def test_spm_matches_transformers_llama(spm, texts, tmp_path):
    """transformers' LlamaTokenizer converted from the same .model file agrees,
    except on text that starts with a space: its Metaspace pre-tokenizer adds the
    dummy prefix only when the text does not already start with U+2581, so
    " x" loses a space there, while SentencePiece and llama.cpp encode "▁▁x"."""
    transformers = pytest.importorskip("transformers")
    sp, tok, model_file = spm
    shutil.copy(model_file, tmp_path / "tokenizer.model")
    try:
        hf = transformers.LlamaTokenizer.from_pretrained(str(tmp_path))
    except Exception as e:  # the conversion needs optional packages
        pytest.skip(f"LlamaTokenizer cannot load the model: {e}")
    # Wikitext's literal "<unk>" is text here (kvrt's parse_special=False).
    backend = hf.backend_tokenizer
    backend.encode_special_tokens = True
    assert_same_ids(
        lambda t: tok.encode(t, add_special=False),
        lambda t: backend.encode(t, add_special_tokens=False).ids,
        [t for t in texts if not t.startswith(" ")],
    )
    assert tok.encode(" x", add_special=False) == sp.encode(" x")
    assert hf.encode(" x", add_special_tokens=False) != sp.encode(" x")
