"""Tokenizer metadata (tokenizer.ggml.*) of a Hugging Face checkpoint, as llama.cpp writes it.

Byte-level BPE tokenizers (tokenizer.json) become model `gpt2` with a pre-tokenizer name found
the way llama.cpp finds it: the hash of the token ids of a fixed probe text. SentencePiece
models (tokenizer.model, Llama 1/2, Mistral v0.1) become model `llama` with scores.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path


class ConvertError(Exception):
    """Bad input to `convert`: reported as one line, never a traceback."""


# The probe text of llama.cpp's convert_hf_to_gguf_update.py: its token ids identify the
# pre-tokenizer (regex splits, digit grouping, special-token handling).
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(ids)) -> tokenizer.ggml.pre, from llama.cpp's table (families kvrt converts).
KNOWN_PRE = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM 1/2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen 1.5-3
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3 emb.
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Nemo
    "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3": "pixtral",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "mpt",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3": "stablelm2",
}

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = (
    1,
    2,
    3,
    4,
    5,
    6,
)


def looks_special(tok: str) -> bool:
    """Added tokens some models forget to flag as special (llama.cpp's heuristic)."""
    return (
        tok in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (tok.startswith("<|") and tok.endswith("|>"))
        or (tok.startswith("<｜") and tok.endswith("｜>"))
        or (tok.startswith("<unused") and tok.endswith(">"))
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: {e}") from None


def pre_tokenizer_name(tokenizer_json: Path) -> str:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConvertError("converting a BPE tokenizer needs the `tokenizers` package") from None
    ids = Tokenizer.from_file(str(tokenizer_json)).encode(CHKTXT).ids
    h = sha256(str(ids).encode()).hexdigest()
    if h not in KNOWN_PRE:
        raise ConvertError(
            f"{tokenizer_json}: unknown BPE pre-tokenizer (hash {h}); llama.cpp would not "
            "know how to split text for it either"
        )
    return KNOWN_PRE[h]


def _bpe_vocab(folder: Path, n_vocab: int):
    tj = _read_json(folder / "tokenizer.json")
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ConvertError(f"{folder}/tokenizer.json: model type {model.get('type')!r} is not BPE")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {t["id"]: t for t in tj.get("added_tokens") or []}
    for i, t in added.items():
        vocab[t["content"]] = i
    if vocab and max(vocab.values()) >= n_vocab:
        raise ConvertError(f"tokenizer has ids up to {max(vocab.values())}, vocab_size {n_vocab}")
    rev = {i: s for s, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in rev:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
        elif i in added:
            tok = rev[i]
            if added[i].get("special") or looks_special(tok):
                types.append(TOKEN_CONTROL)
            else:
                tok = tok.replace("\u2581", " ")  # pre-normalized user-defined spaces
                types.append(TOKEN_USER_DEFINED)
            tokens.append(tok)
        else:
            tokens.append(rev[i])
            types.append(TOKEN_NORMAL)
    return tokens, types


def _spm_vocab(folder: Path, n_vocab: int):
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise ConvertError("converting tokenizer.model needs the `sentencepiece` package") from None
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(folder / "tokenizer.model"))
    tokens = [f"[PAD{i}]".encode() for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    types = [TOKEN_UNUSED] * n_vocab
    for i in range(min(sp.vocab_size(), n_vocab)):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        types[i] = (
            TOKEN_UNKNOWN
            if sp.IsUnknown(i)
            else TOKEN_CONTROL
            if sp.IsControl(i)
            else TOKEN_UNUSED
            if sp.IsUnused(i)
            else TOKEN_BYTE
            if sp.IsByte(i)
            else TOKEN_NORMAL
        )
    if (folder / "added_tokens.json").is_file():
        for tok, i in _read_json(folder / "added_tokens.json").items():
            if i < n_vocab:
                tokens[i], scores[i], types[i] = tok.encode("utf-8"), -1000.0, TOKEN_USER_DEFINED
    if (folder / "tokenizer_config.json").is_file():
        decoder = _read_json(folder / "tokenizer_config.json").get("added_tokens_decoder", {})
        for key, d in decoder.items():
            i, tok = int(key), d["content"]
            if i >= n_vocab:
                continue
            if d.get("special") or looks_special(tok):
                types[i] = TOKEN_CONTROL
            else:
                tok = tok.replace("\u2581", " ")
                types[i] = TOKEN_USER_DEFINED
            tokens[i], scores[i] = tok.encode("utf-8"), -1000.0
    return tokens, scores, types


def write_vocab(w, folder: Path, arch: str, cfg: dict) -> None:
    """tokenizer.ggml.* keys, special tokens, add_bos/eos and the chat template."""
    import gguf

    has_spm = (folder / "tokenizer.model").is_file()
    has_json = (folder / "tokenizer.json").is_file()
    if not has_spm and not has_json:
        raise ConvertError(f"{folder}: no tokenizer.json or tokenizer.model")
    tc_path = folder / "tokenizer_config.json"
    tc = _read_json(tc_path) if tc_path.is_file() else {}
    n_vocab = int(cfg.get("vocab_size") or 0)
    # llama.cpp's Llama converter prefers SentencePiece when tokenizer.model is present.
    if has_spm and (arch == "llama" or not has_json):
        if n_vocab <= 0:
            raise ConvertError("config.json has no vocab_size")
        tokens, scores, types = _spm_vocab(folder, n_vocab)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        merges = False
    else:
        if n_vocab <= 0:
            raise ConvertError("config.json has no vocab_size")
        if arch == "llama" and tc.get("add_prefix_space") is not None:
            w.add_add_space_prefix(tc["add_prefix_space"])
        tokens, types = _bpe_vocab(folder, n_vocab)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre_tokenizer_name(folder / "tokenizer.json"))
        w.add_token_list(tokens)
        w.add_token_types(types)
        merges = True
    special = gguf.SpecialVocab(folder, load_merges=merges, n_vocab=len(tokens))
    if special.special_token_ids.get("eos") is None:
        gen = folder / "generation_config.json"
        eos = _read_json(gen).get("eos_token_id") if gen.is_file() else None
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        if isinstance(eos, int) and 0 <= eos < len(tokens):
            special.special_token_ids["eos"] = eos
    # As llama.cpp: Llama-architecture models with the 49152-token SmolLM/Granite vocabulary
    # are trained without a BOS token.
    if arch == "llama" and n_vocab == 49152:
        special.add_special_token["bos"] = False
    special.add_to_gguf(w, quiet=True)
