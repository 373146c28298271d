"""Shared fixtures: the built-in reference, responses from a correct in-process server, the CLI
and its JSON summary, free local ports and a real Triton host.

Everything here is real: the built-in Gemma 3 checkpoint, transformers generation, the real
``servecheck`` entry point. Fixtures are session-scoped because generating takes seconds. The
helpers are fixtures that return a callable (``run_cli("check", path)``), so no test module
imports from another one or from this file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from servecheck.cli import main
from servecheck.collect.collector import collect
from servecheck.formats.responses import read_records
from servecheck.reference.model import Reference

ROOT = Path(__file__).resolve().parents[1]

RunCli = Callable[..., int]
CheckJson = Callable[..., tuple[int, dict]]


@pytest.fixture(scope="session", autouse=True)
def _check_state_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Chunked runs save their verdicts under a temporary directory, not the user's cache."""
    os.environ["SERVECHECK_STATE"] = str(tmp_path_factory.mktemp("check-state"))


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository root (the working directory of the CLI subprocesses)."""
    return ROOT


@pytest.fixture(scope="session")
def lite_prompts(root: Path) -> Path:
    """examples/prompts-lite.json: 32 requests, greedy and sampled, one seed."""
    return root / "examples" / "prompts-lite.json"


@pytest.fixture(scope="session")
def ref() -> Reference:
    return Reference("builtin")


@pytest.fixture(scope="session")
def lite_responses(tmp_path_factory: pytest.TempPathFactory, lite_prompts: Path) -> Path:
    out = tmp_path_factory.mktemp("lite") / "responses-lite.json"
    summary = collect(lite_prompts, "hf:builtin", out, show_progress=False)
    assert summary.written == summary.planned == 32
    return out


@pytest.fixture()
def lite_records(lite_responses: Path):
    return read_records(lite_responses)


@pytest.fixture(scope="session")
def write_records() -> Callable[[Path, list], Path]:
    """``write_records(path, records)``: the records as a JSON list at ``path``; returns it."""

    def write(path: Path, records) -> Path:
        path.write_text(json.dumps([r.model_dump(exclude_none=True) for r in records]))
        return path

    return write


@pytest.fixture(scope="session")
def run_cli() -> RunCli:
    """``run_cli(*args)``: the ``servecheck`` entry point in this process; returns the exit code."""

    def run(*args: str | Path) -> int:
        try:
            return main([str(a) for a in args])
        except SystemExit as e:  # argparse refusing an argument: exit 2, as on the command line
            return int(e.code or 0)

    return run


@pytest.fixture(scope="session")
def check_json(run_cli: RunCli) -> CheckJson:
    """``check_json(path, tmp_path, reference="builtin", *extra)``: ``servecheck check`` with
    ``--json tmp_path/summary.json``; returns the exit code and the summary."""

    def check(path: Path, tmp_path: Path, reference: str = "builtin",
              *extra: str) -> tuple[int, dict]:
        summary = tmp_path / "summary.json"
        code = run_cli("check", path, "--reference", reference, "--json", summary, *extra)
        return code, json.loads(summary.read_text())

    return check


@pytest.fixture(scope="session")
def check_named() -> Callable[[dict, str], dict]:
    """``check_named(summary, name)``: the one check called ``name`` in a JSON summary."""

    def named(summary: dict, name: str) -> dict:
        return next(c for c in summary["checks"] if c["name"] == name)

    return named


@pytest.fixture(scope="session")
def free_ports() -> Callable[[int], list[int]]:
    """``free_ports(n)``: n distinct local ports that were free a moment ago."""
    from servecheck.servers.triton_host import free_ports as find

    return find


@pytest.fixture(scope="session")
def triton_host(free_ports: Callable[[int], list[int]]
                ) -> Callable[..., AbstractContextManager[dict[str, str]]]:
    """``with triton_host(**kwargs) as address:`` a real Triton server hosting the built-in model
    (servecheck.servers.triton_host, its fault switches as keywords) on free ports of 127.0.0.1;
    ``address`` has its ``http`` and ``grpc`` host:port. Stopped when the block ends."""

    @contextmanager
    def host(**kwargs) -> Iterator[dict[str, str]]:
        from servecheck.servers.triton_host import TritonHost

        http, grpc, metrics = free_ports(3)
        server = TritonHost("builtin", "127.0.0.1", http, grpc, metrics, **kwargs)
        try:
            server.start()
            yield {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}"}
        finally:
            server.stop()

    return host


@pytest.fixture(scope="session")
def mix_collected(tmp_path_factory: pytest.TempPathFactory, run_cli) -> Callable[..., Path]:
    """``mix_collected(target, n, rep, style="neutral", reference="builtin", **settings)``:
    ``servecheck generate`` of the realistic mix (``servecheck.servers.mix``: one seed a
    request; ``settings`` set on every request) against ``target`` with ``--reference``; the
    responses file (collected once per session and arguments)."""
    from servecheck.servers import mix

    done: dict[tuple, Path] = {}

    def collect_(target: str, n: int, rep: int, style: str = "neutral",
                 reference: str = "builtin", **settings) -> Path:
        key = (target, n, rep, style, reference, tuple(sorted(settings.items())))
        if key not in done:
            work = tmp_path_factory.mktemp("mix")
            prompts = work / "prompts.json"
            prompts.write_text(json.dumps([{**b, **settings} for b in mix.blocks(n, rep, style)]))
            out = work / "responses.jsonl"
            assert run_cli("generate", prompts, "--target", target, "--out", out,
                           "--reference", reference, "--no-progress") == 0
            done[key] = out
        return done[key]

    return collect_


@pytest.fixture(scope="session")
def verdicts() -> Callable[..., tuple]:
    """``verdicts(path_or_records, text_only=False, reference="builtin")``: (the ``CheckRun``,
    {check name: result}, the labels of the records judged implausible on their own), as
    ``check`` makes them; ``text_only`` strips the records to the notes' four fields first (ids
    kept, for naming)."""
    import servecheck
    from servecheck.checks.plausibility import judge
    from servecheck.formats.records import ResponseRecord

    def run(source, text_only: bool = False, reference: str = "builtin") -> tuple:
        records = read_records(source) if isinstance(source, Path) else list(source)
        if text_only:
            records = [ResponseRecord(id=r.id, conversations=r.conversations,
                                      parameters=r.parameters, input=r.input, output=r.output)
                       for r in records]
        done = servecheck.check(records, servecheck.CheckOptions(reference))
        judged = judge(done.context, done.results)
        bad = [done.context.labels[i] for i, v in judged.items() if v.verdict != "pass"]
        return done, {r.name: r for r in done.results}, bad

    return run
