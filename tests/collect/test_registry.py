"""Targets from other packages: an installed distribution's entry point in ``servecheck.targets``
makes its scheme a target like the built-ins, listed beside them; a scheme claimed twice is an
error naming both claims.

The distributions are real: a package and a ``*.dist-info`` folder (``METADATA``,
``entry_points.txt``) written to a temporary folder put on ``sys.path``, found by
``importlib.metadata`` as pip's installs are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from servecheck.collect.collector import collect
from servecheck.collect.targets import REGISTRY, TargetInfo, open_target, registered_targets
from servecheck.collect.targets.registry import SUMMARIES
from servecheck.errors import InputError
from servecheck.formats.responses import read_records

PACKAGE = '''
from servecheck.collect.targets import Target
from servecheck.formats.records import ResponseRecord


class FakeTarget(Target):
    """Answers every request with the text its spec names.

    Nothing is sent anywhere: a test double, installed as a package would be.
    """

    def __init__(self, spec: str, text: str) -> None:
        self.spec, self.text = spec, text

    @classmethod
    def from_spec(cls, spec, rest, reference=None):
        return cls(spec, rest)

    async def generate(self, request):
        return ResponseRecord(id=request.id, conversations=request.conversation,
                              parameters=request.parameters, target=self.spec, input="in",
                              output=self.text)


def helper():
    """Not a target."""
'''

Install = Callable[[str, dict[str, str]], None]


@pytest.fixture()
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Install]:
    """``install(dist, {scheme: "module:attr"})``: a distribution ``dist`` (version 0.1) with
    those entry points, beside the package ``fake_targets`` (its ``targets`` module: PACKAGE)."""
    package = tmp_path / "fake_targets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "targets.py").write_text(PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path))

    def install_(dist: str, entries: dict[str, str]) -> None:
        info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        lines = [f"{name} = {value}" for name, value in entries.items()]
        (info / "entry_points.txt").write_text("[servecheck.targets]\n" + "\n".join(lines) + "\n")

    yield install_
    for name in [m for m in sys.modules if m == "fake_targets" or m.startswith("fake_targets.")]:
        del sys.modules[name]


def test_an_installed_package_adds_a_scheme(install: Install, lite_prompts: Path,
                                            tmp_path: Path) -> None:
    install("fake-targets", {"fake": "fake_targets.targets:FakeTarget"})
    target = open_target("fake:Hello.<end_of_turn>")
    assert type(target).__name__ == "FakeTarget"
    assert type(target).__module__ == "fake_targets.targets"
    assert target.text == "Hello.<end_of_turn>"

    listed = registered_targets()
    assert listed["fake"] == TargetInfo("fake", "fake-targets", "fake_targets.targets:FakeTarget",
                                        "Answers every request with the text its spec names.")
    assert list(listed)[: len(REGISTRY)] == list(REGISTRY)  # the built-ins first, untouched

    # usable wherever a spec is: the collector runs the whole matrix on it
    out = tmp_path / "responses.jsonl"
    summary = collect(lite_prompts, "fake:Hi.<end_of_turn>", out, show_progress=False)
    assert summary.written == summary.planned == 32 and not summary.errors
    assert {(r.target, r.output) for r in read_records(out)} == {("fake:Hi.<end_of_turn>",
                                                                   "Hi.<end_of_turn>")}


@pytest.mark.parametrize(("installs", "named"), [
    ([("fake-targets", {"hf": "fake_targets.targets:FakeTarget"})],
     ["'hf'", "servecheck.collect.targets.hf:HFTarget (built-in)",
      "fake_targets.targets:FakeTarget (fake-targets"]),
    ([("fake-targets", {"fake": "fake_targets.targets:FakeTarget"}),
      ("other-targets", {"fake": "fake_targets.targets:helper"})],
     ["'fake'", "(fake-targets", "(other-targets"]),
], ids=["with-a-built-in", "two-packages"])
def test_a_scheme_claimed_twice_is_an_error_naming_both(install: Install, installs: list,
                                                        named: list[str]) -> None:
    for dist, entries in installs:
        install(dist, entries)
    for read in (lambda: open_target("hf:builtin"), registered_targets):
        with pytest.raises(InputError, match="registered twice") as caught:
            read()
        for part in named:
            assert part in str(caught.value)


def test_what_is_no_target_is_refused_and_listed_with_the_reason(install: Install) -> None:
    install("fake-targets", {"notone": "fake_targets.targets:helper",
                             "gone": "fake_targets.missing:Target"})
    with pytest.raises(InputError, match="registered for notone: by fake-targets, is not a "
                                         "servecheck Target class"):
        open_target("notone:x")
    with pytest.raises(InputError, match=r"cannot load fake_targets\.missing:Target \(the gone: "
                                         r"target of fake-targets\): ModuleNotFoundError"):
        open_target("gone:x")
    listed = registered_targets()
    assert listed["notone"].summary == "Not a target."
    assert listed["gone"].summary.startswith("cannot be loaded: No module named")


def test_unknown_scheme_names_the_installed_ones_too(install: Install) -> None:
    install("fake-targets", {"fake": "fake_targets.targets:FakeTarget"})
    with pytest.raises(InputError, match=r"unknown target \(known: hf:…, .*, fake:…\)"):
        open_target("nope:x")


def test_built_ins_are_listed_without_importing_a_target() -> None:
    """``servecheck list`` stays instant: the built-ins' lines are kept beside the registry, so
    no target module (torch, tritonclient, aiohttp) is imported to list them."""
    assert set(SUMMARIES) == set(REGISTRY)
    code = ("import json, sys; from servecheck.collect.targets import registered_targets; "
            "infos = registered_targets(); "
            "print(json.dumps([[i.scheme, i.source, i.value, i.summary] for i in infos.values()] + "
            "[sorted(m for m in sys.modules if m.startswith('servecheck.collect.targets.') "
            "or m in ('torch', 'transformers', 'aiohttp', 'tritonclient'))]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    *infos, imported = json.loads(out.stdout)
    assert imported == ["servecheck.collect.targets.registry"]
    assert [(s, v) for s, _, v, _ in infos] == list(REGISTRY.items())
    assert all(source == "built-in" and summary for _, source, _, summary in infos)
