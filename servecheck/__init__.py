"""servecheck: check that the LLM behind an inference server is the model you think it is.

The pipeline, one package a stage: ``formats`` (prompts, requests, responses) → ``collect`` (the
collector and its targets) → ``reference`` (the Hugging Face reference, its sampling transform
and teacher-forced scores) → ``checks`` → ``report``; ``workflows`` joins them into the commands,
``servers`` are real servers to test against, ``cli`` parses arguments.

What a Python user calls is here, imported lazily: ``import servecheck`` loads neither torch nor
transformers until a name that needs them is used::

    import servecheck
    servecheck.collect(Path("prompts.json"), "openai://127.0.0.1:8000",
                       Path("responses.jsonl"), reference="/models/gemma-3")
    run = servecheck.check(Path("responses.jsonl"), servecheck.CheckOptions("/models/gemma-3"))
    print(run.verdict, [(r.name, r.verdict) for r in run.results])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from servecheck.errors import __version__

_EXPORTS: dict[str, str] = {
    # formats: what users write and read
    "Conversation": "servecheck.formats.conversation",
    "Message": "servecheck.formats.conversation",
    "Parameters": "servecheck.formats.parameters",
    "ResponseRecord": "servecheck.formats.records",
    "Variations": "servecheck.formats.prompts",
    "Request": "servecheck.formats.prompts",
    "expand": "servecheck.formats.prompts",
    "read_records": "servecheck.formats.responses",
    "ResponseWriter": "servecheck.formats.responses",
    # collect
    "collect": "servecheck.collect.collector",
    "Target": "servecheck.collect.targets",
    "open_target": "servecheck.collect.targets",
    # reference: the scoring contract
    "Reference": "servecheck.reference.model",
    "Sampling": "servecheck.reference.sampling",
    "Convention": "servecheck.reference.sampling",
    "HF": "servecheck.reference.sampling",
    "ScoreItem": "servecheck.reference.token_scores",
    "TokenScores": "servecheck.reference.token_scores",
    "score": "servecheck.reference.scoring",
    # checks
    "CheckOptions": "servecheck.checks.core.options",
    "NUMERICS": "servecheck.checks.core.options",
    "CheckContext": "servecheck.checks.core.context",
    "CheckResult": "servecheck.checks.core.results",
    "Details": "servecheck.checks.core.results",
    "Finding": "servecheck.checks.core.results",
    "run_checks": "servecheck.checks",
    # workflows: the commands, as functions
    "check": "servecheck.workflows.check",
    "CheckRun": "servecheck.workflows.check",
    "compare": "servecheck.workflows.compare",
    "probe": "servecheck.workflows.probe",
    "ProbeOptions": "servecheck.workflows.probe",
    # errors
    "InputError": "servecheck.errors",
    "TargetError": "servecheck.errors",
}

__all__ = [
    "HF",
    "NUMERICS",
    "CheckContext",
    "CheckOptions",
    "CheckResult",
    "CheckRun",
    "Convention",
    "Conversation",
    "Details",
    "Finding",
    "InputError",
    "Message",
    "Parameters",
    "ProbeOptions",
    "Reference",
    "Request",
    "ResponseRecord",
    "ResponseWriter",
    "Sampling",
    "ScoreItem",
    "Target",
    "TargetError",
    "TokenScores",
    "Variations",
    "__version__",
    "check",
    "collect",
    "compare",
    "expand",
    "open_target",
    "probe",
    "read_records",
    "run_checks",
    "score",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'servecheck' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from servecheck.checks import run_checks
    from servecheck.checks.core.context import CheckContext
    from servecheck.checks.core.options import NUMERICS, CheckOptions
    from servecheck.checks.core.results import CheckResult, Details, Finding
    from servecheck.collect.collector import collect
    from servecheck.collect.targets import Target, open_target
    from servecheck.errors import InputError, TargetError
    from servecheck.formats.conversation import Conversation, Message
    from servecheck.formats.parameters import Parameters
    from servecheck.formats.prompts import Request, Variations, expand
    from servecheck.formats.records import ResponseRecord
    from servecheck.formats.responses import ResponseWriter, read_records
    from servecheck.reference.model import Reference
    from servecheck.reference.sampling import HF, Convention, Sampling
    from servecheck.reference.scoring import score
    from servecheck.reference.token_scores import ScoreItem, TokenScores
    from servecheck.workflows.check import CheckRun, check
    from servecheck.workflows.compare import compare
    from servecheck.workflows.probe import ProbeOptions, probe
