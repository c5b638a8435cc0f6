"""kvrt: an LLM runtime for GGUF models with a compressed KV cache."""

from __future__ import annotations

from ._core import GGUFFile  # noqa: F401
from .model import Model

__all__ = ["Model", "GGUFFile", "__version__"]
__version__ = "0.1.0"
