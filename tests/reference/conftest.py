"""Fixtures of the reference tests only: a real byte-level vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest

VOCAB_CACHE = Path.home() / ".cache" / "servecheck" / "vocab"
LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"


@pytest.fixture(scope="session")
def qwen2_tokenizer() -> Path:
    """Qwen2's real tokenizer (151,936 byte-level BPE tokens, ChatML template), from the
    vocabulary-only GGUF that llama.cpp's source ships inside the llama-cpp-python sdist on PyPI
    (no model hub). Fetched once into ~/.cache/servecheck/vocab and saved there as an HF
    tokenizer; about 1 minute the first time."""
    out = VOCAB_CACHE / "qwen2"
    if (out / "tokenizer_config.json").exists():
        return out
    import subprocess
    import sys
    import tarfile
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--no-binary", ":all:", LLAMA_CPP_SDIST, "-d", tmp], check=True)
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("ggml-vocab-qwen2.gguf"))
            tar.extract(member, tmp, filter="data")
        gguf = Path(tmp) / member.name
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok.save_pretrained(out)
    return out
