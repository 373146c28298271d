"""How a server counts the end token it stopped on, found from the records, not assumed.

Engines agree that an answer ends with the model's end-of-turn token and disagree on whether
that token is one of the answer's tokens. vLLM, TensorRT-LLM, CTranslate2 (with
``return_end_token``) and ONNX Runtime GenAI count it in ``usage.completion_tokens`` and give it
a log-prob; llama.cpp counts it in neither (and strips it from the text). Judged under the wrong
one, a correct llama.cpp server "miscounts every record by one" and its log-probs "stop lining
up with the scored tokens". Neither is a bug, so the convention is read off the finished
records themselves: a served count one short of the tokens on every finished output and exact
on every cut one is the end token left out, not a miscount.

Each count is compared with the output's tokens up to and including its end marker (the
server's ids where it gave them, else the reference tokenization of the text, which a sampler
may have split otherwise: hence a vote, not a rule per record). The finished records vote for
"counted" (no shortfall) or "left out" (one short); the majority wins, and a tie or no vote keeps
"counted", under which a real miscount shows. A record cut at max_tokens never votes: it has no
end token, and is judged exactly under either convention.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from servecheck.formats.records import ResponseRecord
    from servecheck.reference.model import Reference


@dataclass(frozen=True)
class EndCounting:
    usage_counts_end: bool = True
    """``usage.completion_tokens`` counts the end token."""
    logprob_for_end: bool = True
    """The served log-probs include one for the end token."""
    votes: dict[str, dict[str, int]] | None = None
    """Per count (``usage``, ``logprobs``): finished records one short / exact."""

    def describe(self, what: str) -> str | None:
        """A sentence for a check's row when the server leaves the end token out of ``what``
        (``usage`` or ``logprobs``); None when it counts it."""
        counts = self.usage_counts_end if what == "usage" else self.logprob_for_end
        if counts:
            return None
        v = (self.votes or {}).get(what, {})
        noun = "completion_tokens" if what == "usage" else "the served log-probs"
        return (f"the end token is not counted in {noun} ({v.get('short', 0)} of "
                f"{v.get('short', 0) + v.get('exact', 0)} finished records one short; "
                f"llama.cpp's convention), so it is left out of the comparison")

    def to_json(self) -> dict[str, Any]:
        return {"usage_counts_end": self.usage_counts_end,
                "logprob_for_end": self.logprob_for_end, "votes": self.votes or {}}


def _tokens_through_end(r: ResponseRecord, ref: Reference) -> int | None:
    """Output tokens up to and including the end token, or None when the record did not end
    on one. Ids where the server gave them, else the text's reference tokenization (not the
    searched one: this is read before the search, which uses it)."""
    ends = set(ref.end_ids)
    ids = r.output_token_ids if r.output_token_ids is not None else ref.encode(r.output)
    cut = next((k + 1 for k, t in enumerate(ids) if t in ends), None)
    return cut


def find_end_counting(records: Sequence[ResponseRecord], ref: Reference) -> EndCounting:
    """The convention the answered ``records`` show, their outputs tokenized by ``ref``."""
    votes: dict[str, Counter[str]] = {"usage": Counter(), "logprobs": Counter()}
    for r in records:
        n = _tokens_through_end(r, ref)
        if n is None:
            continue
        served = {"usage": r.usage.completion_tokens if r.usage else None,
                  "logprobs": len(r.output_logprobs) if r.output_logprobs else None}
        for what, count in served.items():
            if count is None:
                continue
            if count == n:
                votes[what]["exact"] += 1
            elif count == n - 1:
                votes[what]["short"] += 1
    left_out = {what: v["short"] > v["exact"] for what, v in votes.items()}
    return EndCounting(not left_out["usage"], not left_out["logprobs"],
                       {k: dict(v) for k, v in votes.items() if v})
