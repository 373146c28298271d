"""Shared fixtures: the built-in reference, responses from a correct in-process server, a CLI runner.

Everything here is real: the built-in Gemma 3 checkpoint, transformers generation, the real
``servecheck`` entry point. Fixtures are session-scoped because generating takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecheck.cli import main
from servecheck.generate import collect
from servecheck.reference import Reference
from servecheck.responses import read_records

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
