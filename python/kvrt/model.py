"""The Python face of the engine: kvrt.Model."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from . import _core


class Model:
    """A GGUF model with one inference context.

    >>> m = kvrt.Model("model.gguf", n_ctx=2048)
    >>> logits = m.eval(m.tokenize("Hello"))   # (n_tokens, n_vocab) float32

    The engine releases the GIL while it computes.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_ctx: int = 0,
        n_threads: int = 0,
        n_batch: int = 512,
        kv: str = "f16",
        cache_type_k: Optional[str] = None,
        cache_type_v: Optional[str] = None,
    ):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model file not found: {path}")
        self.path = path
        self._m = _core.Model(
            path, n_ctx, n_threads, n_batch, cache_type_k or kv, cache_type_v or kv
        )
        self._metadata = None

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list:
        return self._m.tokenize(text, add_special, parse_special)

    def detokenize(self, ids: Sequence[int], render_special: bool = False) -> str:
        return self._m.detokenize(list(ids), render_special)

    def eval(self, tokens: Sequence[int], logits_all: bool = True) -> np.ndarray:
        """Evaluates tokens after those already in the cache; returns logits
        of every token (n, n_vocab), or of the last one (1, n_vocab)."""
        return self._m.eval(list(tokens), logits_all)

    def reset(self) -> None:
        """Empties the KV cache."""
        self._m.reset()

    def perplexity(self, tokens: Sequence[int], n_chunks: int = 0) -> dict:
        """llama-perplexity protocol over `tokens` with chunks of n_ctx."""
        return self._m.perplexity(list(tokens), n_chunks)

    @property
    def metadata(self) -> dict:
        if self._metadata is None:
            self._metadata = _core.GGUFFile(self.path).metadata
        return self._metadata

    n_past = property(lambda self: self._m.n_past)
    n_ctx = property(lambda self: self._m.n_ctx)
    n_vocab = property(lambda self: self._m.n_vocab)
    n_threads = property(lambda self: self._m.n_threads)
    bos_id = property(lambda self: self._m.bos_id)
    eos_id = property(lambda self: self._m.eos_id)
    kv_bytes = property(lambda self: self._m.kv_bytes)
    kv_bits_per_element = property(lambda self: self._m.kv_bits_per_element)

    def __repr__(self) -> str:
        return f"kvrt.Model({self.path!r}, n_ctx={self.n_ctx}) [{self._m.description}]"
