"""The Python face of the engine: kvrt.Model."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np

from . import _core


class Model:
    """A GGUF model with one inference context.

    >>> m = kvrt.Model("model.gguf", n_ctx=2048)
    >>> logits = m.eval(m.tokenize("Hello"))   # (n_tokens, n_vocab) float32

    kv picks the KV cache format of keys and values (cache_type_k / _v apart):
    f32, f16, q8_0, q4_0, affine:B, rot:B (B = 2, 3, 4, 8 code bits), pca[:B]
    (B average bits per element; needs `python -m kvrt calibrate`, found as
    <model>.kvcal.gguf or given by kv_calib), pca:B:wN / pca:B:eN (each query
    reads its newest N positions exact / in 8 bits, paid for within B) or auto (pca
    when calibrated, else f16). device="cuda" runs the forward pass on the GPU (a build with
    CMAKE_ARGS=-DKVRT_CUDA=ON; every KV format). The
    engine releases the GIL while it computes.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n_ctx: int = 0,
        n_threads: int = 0,
        n_batch: int = 512,
        kv: str = "f16",
        cache_type_k: str | None = None,
        cache_type_v: str | None = None,
        kv_calib: str | os.PathLike | None = None,
        device: str = "cpu",
    ):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model file not found: {path}")
        self.path = path
        self._m = _core.Model(
            path, n_ctx, n_threads, n_batch, cache_type_k or kv, cache_type_v or kv,
            os.fspath(kv_calib) if kv_calib else "", device,
        )
        self._metadata = None
        # (prompt ids, generator) of the last chat turn: what the cache holds.
        self._chat_state = None
        self.chat_stats: dict = {}

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list:
        return self._m.tokenize(text, add_special, parse_special)

    def detokenize(self, ids: Sequence[int], render_special: bool = False) -> str:
        return self._m.detokenize(list(ids), render_special)

    def eval(self, tokens: Sequence[int], logits_all: bool = True) -> np.ndarray:
        """Evaluates tokens after those already in the cache; returns logits
        of every token (n, n_vocab), or of the last one (1, n_vocab)."""
        self._chat_state = None
        return self._m.eval(list(tokens), logits_all)

    def reset(self) -> None:
        """Empties the KV cache."""
        self._chat_state = None
        self._m.reset()

    def perplexity(self, tokens: Sequence[int], n_chunks: int = 0) -> dict:
        """llama-perplexity protocol over `tokens` with chunks of n_ctx."""
        self._chat_state = None
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
        n_keep=0,
    ):
        self._chat_state = None
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
            n_keep,
        )

    def apply_chat_template(
        self,
        messages: Sequence[dict],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
    ) -> str:
        """The prompt text of `messages` ([{"role": ..., "content": ...}]) in the
        model's chat template (tokenizer.chat_template), as transformers'
        apply_chat_template(tokenize=False) renders it. chat_template names a
        family instead ("chatml", "llama3", ...: _core.chat_template_names())."""
        jinja = self.metadata.get("tokenizer.chat_template", "")
        pairs = [(m["role"], m["content"]) for m in messages]
        special = [
            self._m.detokenize([i], True) if i >= 0 else "" for i in (self.bos_id, self.eos_id)
        ]
        return _core.chat_template_apply(
            jinja, pairs, add_generation_prompt, special[0], special[1], chat_template or ""
        )

    def chat(
        self,
        messages: Sequence[dict],
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
        chat_template: str | None = None,
    ) -> str | Iterator[str]:
        """The assistant's reply to `messages` ([{"role": ..., "content": ...}]),
        with generate()'s options; chat_template names a family instead of
        the model's template (see apply_chat_template).

        The KV cache is kept between calls: when the conversation extends the
        previous one (append the reply and the next user message), only the
        tokens after the prefix already cached are evaluated. chat_stats says
        how many were (n_tokens, n_cached, n_evaluated). A streamed reply
        interrupted by KeyboardInterrupt leaves the model usable.
        """
        # The template writes any BOS itself, so the tokenizer adds none.
        ids = self.tokenize(self.apply_chat_template(messages, True, chat_template), False, True)
        if not ids:
            raise ValueError("the conversation renders to no tokens")
        keep = 0
        if self._chat_state is not None:
            prev_ids, prev_gen = self._chat_state
            # The cache holds the previous prompt and every sampled token but the last.
            cached = (prev_ids + list(prev_gen.tokens))[: self.n_past]
            keep = next((i for i, (a, b) in enumerate(zip(cached, ids)) if a != b), None)
            if keep is None:
                keep = min(len(cached), len(ids))
        # At least one token is evaluated: sampling needs its logits.
        keep = min(keep, len(ids) - 1)
        gen = self._generator(
            ids[keep:],
            max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repeat_penalty=repeat_penalty,
            repeat_last_n=repeat_last_n,
            seed=seed,
            stop=stop,
            n_keep=keep,
        )
        self._chat_state = (ids, gen)
        self.chat_stats = {"n_tokens": len(ids), "n_cached": keep, "n_evaluated": len(ids) - keep}
        it = _pieces(gen)
        return it if stream else "".join(it)

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
    kv_format = property(lambda self: self._m.kv_format)
    # The line kvrt-cli prints on stderr: bytes, bits per element, format and
    # (pca) the plan's shape.
    kv_summary = property(lambda self: self._m.kv_summary)

    def __repr__(self) -> str:
        return f"kvrt.Model({self.path!r}, n_ctx={self.n_ctx}) [{self._m.description}]"


def _pieces(gen) -> Iterator[str]:
    """Text pieces of a _core.Generator until it stops."""
    while (piece := gen.next()) is not None:
        yield piece
