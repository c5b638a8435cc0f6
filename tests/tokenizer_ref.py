"""Reference material for the tokenizer tests: real-text chunks, crafted strings,
the pre-tokenizer regexes, and writers of tokenizer-only GGUF files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gguf

# The Hugging Face pre-tokenizer regexes the hand-written splitters implement.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")

TEXT_FILES = ("tinyshakespeare.txt", "wikitext-2/test.txt", "wikitext-2/valid.txt")

CRAFTED = [
    "",
    " ",
    "  ",
    "\n",
    "\t",
    "a",
    " leading space",
    "  two leading spaces",
    "trailing spaces   ",
    "Hello  world   12345 1,234,567.89  \t\t x\n\n\n  y  \n end   ",
    "3.14159265358979323846264338327950288419716939937510 and 2024-05-17T12:34:56Z",
    "x  1 x   12 a\n\n 2024 \t7 (100%) $1,000,000.00 +44 20 7946 0958",
    "I'm can't won't they're we've he'll she'd IT'S I'LL WE'VE 'tis o'clock rock'n'roll",
    "café naïve Zürich résumé façade Ünïcödé e\u0301 n\u0303",
    "中文字符 日本語のテキスト、ひらがな カタカナ 한국어 텍스트",
    "Ελληνικά Русский текст العربية עברית हिन्दी ภาษาไทย",
    "emoji 😀👍🏽 👨\u200d👩\u200d👧\u200d👦 🇫🇷 ❤️ ✨🚀",
    "numbers ٣٤٥ ² ½ Ⅻ ①②③ ３４５",
    "spaces\u00a0nbsp\u3000ideographic\u2009thin\u2028line\u2029para",
    "\r\nwindows\r\nline endings\r\n\r\n",
    "tabs\tand\t\ttabs \t \t mixed",
    "controls \x01\x02\x7f and \x1b[0m",
    "def f(x):\n    return x**2  # comment\n\n\tif a != b: {}\n",
    "!!! ... ??? --- ___ ((())) [[]] {{}} <<>> @@ ## %% ^^ && ** ~~ `` ''' \"\"\"",
    "   \n\n\n   \n \t \n",
    "end\n\n\n",
]


def text_chunks(n_per_file: int, size: int, text_file) -> list[str]:
    """n_per_file chunks of `size` characters spread evenly over each test text."""
    chunks = []
    for name in TEXT_FILES:
        data = Path(text_file(name)).read_text(encoding="utf-8")
        step = max(1, (len(data) - size) // n_per_file)
        chunks += [data[i * step : i * step + size] for i in range(n_per_file)]
    return chunks


def _writer(path: Path, model: str) -> gguf.GGUFWriter:
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tokenizer_model(model)
    return w


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_bpe_gguf(
    path: Path,
    pre: str,
    tokens: Sequence[str],
    types: Sequence[int],
    merges: Sequence[str],
    bos: int | None = None,
    eos: int | None = None,
) -> Path:
    """A byte-level BPE ("gpt2") tokenizer-only GGUF with pre-tokenizer `pre`."""
    w = _writer(path, "gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(list(tokens))
    w.add_token_types(list(types))
    w.add_token_merges(list(merges))
    if bos is not None:
        w.add_bos_token_id(bos)
    if eos is not None:
        w.add_eos_token_id(eos)
    _finish(w)
    return path


def write_spm_gguf(
    path: Path, tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]
) -> Path:
    """A SentencePiece ("llama") tokenizer-only GGUF. BOS/EOS/UNK ids and the
    add-BOS / space-prefix flags are left out, so llama.cpp's defaults apply."""
    w = _writer(path, "llama")
    w.add_token_list(list(tokens))
    w.add_token_scores(list(scores))
    w.add_token_types(list(types))
    _finish(w)
    return path
