"""Which class a spec's scheme opens: servecheck's own targets, and those installed packages add.

The built-ins are "module:class" strings, imported only when a spec names them, so an optional
client library is needed only by those who use it. Another package adds a scheme with an entry
point in the group ``servecheck.targets`` (``fake = "fake_pkg.targets:FakeTarget"``); it is
found each time the registry is read, so installing the package is all it takes. A scheme
claimed twice (by a package and servecheck, or by two packages) is an error naming both, raised
when the registry is read: neither silently shadowing the other, so a spec always means one
thing.
"""

from __future__ import annotations

from dataclasses import dataclass

from servecheck.errors import InputError

GROUP = "servecheck.targets"
"""The entry-point group an installed package registers its targets in."""
BUILT_IN = "built-in"

# scheme -> "module:class"; nothing here is imported until a spec uses it.
REGISTRY: dict[str, str] = {
    "hf": "servecheck.collect.targets.hf:HFTarget",
    "triton": "servecheck.collect.targets.triton:TritonTarget",
    "triton+grpc": "servecheck.collect.targets.triton_grpc:TritonGrpcTarget",
    "openai": "servecheck.collect.targets.openai:OpenAITarget",
    "http": "servecheck.collect.targets.openai:OpenAITarget",
    "https": "servecheck.collect.targets.openai:OpenAITarget",
    "hf-endpoint": "servecheck.collect.targets.hf_endpoint:HFEndpointTarget",
    "hf-endpoint+https": "servecheck.collect.targets.hf_endpoint:HFEndpointTarget",
    "ct2": "servecheck.collect.targets.ct2:CT2Target",
    "ortgenai": "servecheck.collect.targets.ortgenai:OrtGenAITarget",
}

SUMMARIES: dict[str, str] = {
    "hf": "a checkpoint generating in this process (transformers): the ground truth",
    "triton": "a TensorRT-LLM model on Triton, over HTTP (generate extension)",
    "triton+grpc": "a TensorRT-LLM model on Triton, over gRPC (tritonclient)",
    "openai": "any OpenAI-compatible server (vLLM, SGLang, TGI, trtllm-serve, llama.cpp)",
    "http": "an OpenAI-compatible server named by its http:// URL",
    "https": "an OpenAI-compatible server named by its https:// URL",
    "hf-endpoint": "an HF Inference Endpoint running servecheck's handler",
    "hf-endpoint+https": "an HF Inference Endpoint running servecheck's handler, over TLS",
    "ct2": "a CTranslate2 model, in process",
    "ortgenai": "an ONNX Runtime GenAI model, in process",
}
"""One line per built-in, for ``servecheck list``: what a class docstring would say, kept here
so that listing imports none of the targets' modules (torch, tritonclient, …)."""


@dataclass(frozen=True)
class TargetInfo:
    """One scheme ``open_target`` knows."""

    scheme: str
    source: str
    """``"built-in"``, or the name of the distribution whose entry point adds it."""
    value: str
    """Where the class is: ``"module:class"``."""
    summary: str
    """The first line of the class docstring (a built-in's ``SUMMARIES`` line)."""


def schemes() -> dict[str, tuple[str, str]]:
    """Every scheme, built-ins first: (``"module:class"``, source). A scheme claimed twice is an
    ``InputError`` naming both claims."""
    from importlib.metadata import entry_points

    found = {scheme: (value, BUILT_IN) for scheme, value in REGISTRY.items()}
    for ep in entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        source = dist.name if dist is not None else "an unnamed distribution"
        if ep.name in found:
            value, other = found[ep.name]
            raise InputError(f"the target scheme {ep.name!r} is registered twice: {value} "
                             f"({other}) and {ep.value} ({source}, entry point group {GROUP}); "
                             f"uninstall one of them")
        found[ep.name] = (ep.value, source)
    return found


def load(scheme: str, value: str, source: str) -> object:
    """The object ``value`` names. A built-in's import errors are its own (a missing optional
    client says what to install); an installed package's are named with the package."""
    import importlib

    module, _, name = value.partition(":")
    if source == BUILT_IN:
        return getattr(importlib.import_module(module), name)
    from importlib.metadata import EntryPoint

    try:
        return EntryPoint(scheme, value, GROUP).load()
    except Exception as e:
        raise InputError(f"cannot load {value} (the {scheme}: target of {source}): "
                         f"{type(e).__name__}: {e}") from e


def registered_targets() -> dict[str, TargetInfo]:
    """Every scheme ``open_target`` knows, built-ins first, as ``servecheck list`` shows them.
    Only installed packages' targets are imported (for their docstrings); one that cannot be
    is listed with the reason."""
    infos = {}
    for scheme, (value, source) in schemes().items():
        if source == BUILT_IN:
            summary = SUMMARIES.get(scheme, "")
        else:
            try:
                doc = getattr(load(scheme, value, source), "__doc__", None) or ""
            except InputError as e:
                doc = f"cannot be loaded: {e.__cause__ or e}"
            summary = doc.strip().partition("\n")[0]
        infos[scheme] = TargetInfo(scheme, source, value, summary)
    return infos
