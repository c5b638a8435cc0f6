"""kvrt: an LLM runtime for GGUF models with a compressed KV cache."""

from . import _core  # noqa: F401

__version__ = "0.1.0"
