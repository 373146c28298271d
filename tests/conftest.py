"""Shared fixtures: the built-in reference, responses from a correct in-process server, a CLI runner.

Everything here is real: the built-in Gemma 3 checkpoint, transformers generation, the real
``servecheck`` entry point. Fixtures are session-scoped because generating takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecheck.cli import main
from servecheck.collect.collector import collect
from servecheck.formats.responses import read_records
from servecheck.reference.model import Reference

ROOT = Path(__file__).resolve().parents[1]
LITE = ROOT / "examples" / "prompts-lite.json"


@pytest.fixture(scope="session")
def ref() -> Reference:
    return Reference("builtin")


@pytest.fixture(scope="session")
def lite_responses(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lite") / "responses-lite.json"
    summary = collect(LITE, "hf:builtin", out, show_progress=False)
    assert summary.written == summary.planned == 32
    return out


@pytest.fixture()
def lite_records(lite_responses: Path):
    return read_records(lite_responses)


def write_records(path: Path, records) -> Path:
    path.write_text(json.dumps([r.model_dump(exclude_none=True) for r in records]))
    return path


def run_cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


def check_json(path: Path, tmp_path: Path, reference: str = "builtin",
               *extra: str) -> tuple[int, dict]:
    summary = tmp_path / "summary.json"
    code = run_cli("check", path, "--reference", reference, "--json", summary, *extra)
    return code, json.loads(summary.read_text())


def check_named(summary: dict, name: str) -> dict:
    return next(c for c in summary["checks"] if c["name"] == name)


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
