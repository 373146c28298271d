"""Fixtures of the reference tests only: a real byte-level vocabulary.

Its source is llama.cpp's vocabulary-only GGUF files, which ``make llama-vocab`` (``make test``
and ``make test-fast`` run it; .ci/llama-vocab) caches once per machine: the tests read files and
download nothing, and skip, naming that target, where the cache is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

LLAMA_VOCAB = Path(os.environ.get("SERVECHECK_LLAMA_VOCAB")
                   or Path.home() / ".cache" / "servecheck" / "llama-vocab")
"""Where .ci/llama-vocab puts the GGUF files (the same variable and default)."""


@pytest.fixture(scope="session")
def llama_vocab() -> Path:
    """The directory of llama.cpp's ``ggml-vocab-*.gguf`` files (real tokenizers, no weights)."""
    if not (LLAMA_VOCAB / ".servecheck-ready").exists():
        pytest.skip(f"llama.cpp's vocabulary GGUFs are not cached in {LLAMA_VOCAB}: "
                    "run `make llama-vocab` (make test and make test-fast run it)")
    return LLAMA_VOCAB


@pytest.fixture(scope="session")
def qwen2_tokenizer(llama_vocab: Path) -> Path:
    """Qwen2's real tokenizer (151,936 byte-level BPE tokens, ChatML template), from the
    vocabulary-only GGUF that llama.cpp's source ships (no model hub). Converting it takes about
    10 s, so the HF tokenizer is saved beside the GGUF files, once per transformers version, and
    read from there after."""
    import transformers
    from transformers import AutoTokenizer

    out = llama_vocab / f"hf-transformers-{transformers.__version__}" / "qwen2"
    if (out / "tokenizer_config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(llama_vocab, gguf_file="ggml-vocab-qwen2.gguf")
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    tok.save_pretrained(partial)
    try:
        partial.rename(out)  # whole or not at all: a session stopped mid-save leaves no half copy
    except OSError:  # another session saved it first
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    return out
