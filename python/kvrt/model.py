"""The Python face of the engine: kvrt.Model."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Optional

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

    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 128,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        stream: bool = False,
    ) -> str | Iterator[str]:
        """Generates text after `prompt` with llama.cpp's sampling chain and
        defaults (temperature <= 0: greedy; max_tokens=-1: until the context
        is full). A str prompt is tokenized with special tokens added and
        parsed (so chat templates work); a list of ids is used as is.

        Returns the text, or with stream=True an iterator of text pieces
        (each valid UTF-8; joined they equal the non-streamed text). Stops at
        an end-of-generation token, max_tokens, a stop string (not included)
        or a full context. The KV cache is reset first, so a call interrupted
        by KeyboardInterrupt leaves the model usable.
        """
        gen = self._generator(
            prompt,
            max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            repeat_last_n=repeat_last_n,
            seed=seed,
            stop=stop,
        )
        it = _pieces(gen)
        return it if stream else "".join(it)

    def generate_tokens(
        self, prompt: str | Sequence[int], max_tokens: int = 128, **sampling
    ) -> list:
        """Like generate() (same keyword arguments, no stream) but returns the
        sampled token ids, an end-of-generation token included when one
        stopped it."""
        gen = self._generator(prompt, max_tokens, **sampling)
        for _ in _pieces(gen):
            pass
        return list(gen.tokens)

    def _generator(
        self,
        prompt,
        max_tokens,
        temperature=0.8,
        top_k=40,
        top_p=0.95,
        min_p=0.05,
        repeat_penalty=1.0,
        repeat_last_n=64,
        seed=None,
        stop=None,
    ):
        ids = self.tokenize(prompt, True, True) if isinstance(prompt, str) else list(prompt)
        if isinstance(stop, str):
            stop = [stop]
        if seed is not None and not 0 <= seed <= 0xFFFFFFFF:
            raise ValueError("seed must be in [0, 2**32)")
        return self._m.generator(
            ids,
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n,
            -1 if seed is None else seed,
            list(stop or []),
        )

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


def _pieces(gen) -> Iterator[str]:
    """Text pieces of a _core.Generator until it stops."""
    while (piece := gen.next()) is not None:
        yield piece
