"""A checkpoint converted for an independent engine, by that engine's own converter, cached.

servecheck's promise is that a correct server passes whatever its engine. An engine that shares
code with transformers cannot show a convention transformers does not have, so the suite also
serves the built-in checkpoints on three engines that share none: CTranslate2 (its
``TransformersConverter``), ONNX Runtime GenAI (its model builder) and llama.cpp (the
``convert_hf_to_gguf.py`` its sdist carries). Each conversion runs once per machine, in a child
process (the converters patch and import heavy modules), into
``~/.cache/servecheck/engines/<engine>-<checkpoint>-<digest>`` (or ``$SERVECHECK_ENGINES``),
written beside and renamed into place, so an interrupted build leaves nothing half made.

Two converters need a nudge for these freshly trained checkpoints (../shared/reference/
engines.md, and docs/engines.md):

- ONNX Runtime GenAI reads Gemma 3's rope settings from the flat ``rope_theta`` /
  ``rope_local_base_freq`` of older configs; transformers 5 writes them per layer type under
  ``rope_parameters``, so they are flattened back before its builder reads the config.
- llama.cpp's converter names the BPE pre-tokenizer by a hash of known vocabularies, and a
  freshly trained one matches none: ``gpt-2`` is the right pre-tokenizer for these byte-level
  vocabularies (llama.cpp then tokenizes every rendered prompt as transformers does). Its
  Gemma 3 converter also writes no per-layer attention kind, and the loader then assumes every
  sixth layer is global; the built-in's last layer is (``layer_types``), so the pattern is
  written from the config, as the loader reads it (``gemma3.attention.sliding_window_pattern``).

``python -m servecheck.servers.convert ENGINE CHECKPOINT OUT`` runs one conversion here.
"""

from __future__ import annotations

import hashlib
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from servecheck.errors import InputError

ENGINES = ("ct2", "ortgenai", "gguf")
LLAMA_VERSION = "0.3.36"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "generation_config.json", "special_tokens_map.json")
"""What CTranslate2's converter copies beside the weights: CTranslate2 has no tokenizer, so a
deployment tokenizes and templates with the checkpoint's own files."""


def cache_root() -> Path:
    return Path(os.environ.get("SERVECHECK_ENGINES",
                               Path.home() / ".cache" / "servecheck" / "engines"))


def llama_venv() -> Path:
    """The llama-cpp-python environment ``.ci/llama-cpp-env`` builds (its sdist unpacked in
    ``src/``)."""
    return Path(os.environ.get("SERVECHECK_LLAMA_VENV", Path.home() / ".cache" / "servecheck" /
                               f"llama-cpp-python-{LLAMA_VERSION}"))


def llama_source() -> Path:
    return llama_venv() / "src" / "vendor" / "llama.cpp"


def _digest(checkpoint: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(checkpoint.iterdir()):
        if path.is_file():
            h.update(path.name.encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:12]


def converted(engine: str, checkpoint: Path) -> Path:
    """The checkpoint converted for ``engine``, converting it the first time (a folder; for
    ``gguf`` the folder holds ``model.gguf``)."""
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    out = cache_root() / f"{engine}-{checkpoint.name}-{_digest(checkpoint)}"
    if out.is_dir():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        done = subprocess.run([sys.executable, "-m", "servecheck.servers.convert", engine,
                               str(checkpoint), str(work / "model")],
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"converting {checkpoint} for {engine} failed:\n"
                               f"{(done.stdout + done.stderr)[-3000:]}")
        try:
            os.replace(work / "model", out)
        except OSError:  # another process converted it meanwhile
            if not out.is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _ct2(checkpoint: Path, out: Path) -> None:
    from ctranslate2.converters import TransformersConverter

    files = [f for f in TOKENIZER_FILES if (checkpoint / f).exists()]
    TransformersConverter(str(checkpoint), copy_files=files).convert(str(out), quantization=None)


def _ortgenai(checkpoint: Path, out: Path) -> None:
    import transformers

    load = transformers.AutoConfig.from_pretrained.__func__  # type: ignore[attr-defined]

    def flat_rope(cls, *args, **kwargs):
        config = load(cls, *args, **kwargs)
        rope = getattr(config, "rope_parameters", None)
        if isinstance(rope, dict) and "full_attention" in rope:
            full = rope["full_attention"]
            config.rope_theta = full["rope_theta"]
            config.rope_local_base_freq = rope.get("sliding_attention", full)["rope_theta"]
            config.rope_parameters = dict(full)
        return config

    transformers.AutoConfig.from_pretrained = classmethod(flat_rope)
    sys.argv = ["builder", "-i", str(checkpoint), "-o", str(out), "-p", "fp32", "-e", "cpu",
                "-c", str(out.parent / "ortgenai-cache")]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")


def _gguf(checkpoint: Path, out: Path) -> None:
    source = llama_source()
    if not (source / "convert_hf_to_gguf.py").exists():
        raise InputError(f"no llama.cpp source at {source}: run .ci/llama-cpp-env (make test does)")
    sys.path[:0] = [str(source), str(source / "gguf-py")]
    from conversion import base, gemma  # the converter's own package, from the sdist

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    set_parameters = gemma.Gemma3Model.set_gguf_parameters

    def with_layer_pattern(self) -> None:
        set_parameters(self)
        kinds = self.hparams.get("layer_types")
        if kinds:
            self.gguf_writer.add_sliding_window_pattern([k == "sliding_attention" for k in kinds])

    gemma.Gemma3Model.set_gguf_parameters = with_layer_pattern
    out.mkdir(parents=True)
    sys.argv = ["convert_hf_to_gguf.py", str(checkpoint), "--outtype", "f32",
                "--outfile", str(out / "model.gguf")]
    runpy.run_path(str(source / "convert_hf_to_gguf.py"), run_name="__main__")


def main(argv: list[str]) -> None:
    engine, checkpoint, out = argv
    {"ct2": _ct2, "ortgenai": _ortgenai, "gguf": _gguf}[engine](Path(checkpoint), Path(out))


if __name__ == "__main__":
    main(sys.argv[1:])
