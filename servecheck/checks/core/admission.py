"""What a record must be before anything is checked: token ids of the reference's vocabulary, a
prompt and output that fit its context, a conversation its chat template renders. A record that
is not is bad input, named by record before any work (exit 2), not a server failure.
"""

from __future__ import annotations

from servecheck.errors import InputError
from servecheck.formats.records import ResponseRecord
from servecheck.reference.model import Reference

__all__ = ["check_ids", "check_lengths", "render_prompts"]


def check_ids(records: list[ResponseRecord], labels: list[str], ref: Reference) -> None:
    """Token ids a server reported must be ids of the reference's vocabulary: one outside it
    is bad input (another model's file, or a wrong ``--reference``), named before any work."""
    vocab = ref.vocab_size
    for label_, r in zip(labels, records, strict=True):
        for name in ("prompt_token_ids", "output_token_ids"):
            ids = getattr(r, name) or []
            bad = next((k for k, t in enumerate(ids) if not 0 <= t < vocab), None)
            if bad is not None:
                raise InputError(f"{name}[{bad}] = {ids[bad]} is not an id of the reference's "
                                 f"vocabulary (0…{vocab - 1}): ids of another model, or the "
                                 f"wrong --reference", where=r.named(label_))


def check_lengths(records: list[ResponseRecord], labels: list[str], ref: Reference) -> None:
    """A record that cannot fit the reference's context is refused before it is tokenized:
    by its ids where it has them, else by the fewest tokens its text can be."""
    limit = ref.context_length
    if not limit:
        return
    per_token = ref.longest_token_chars
    for label_, r in zip(labels, records, strict=True):
        prompt = len(r.prompt_token_ids) if r.prompt_token_ids else len(r.input) // per_token
        output = len(r.output_token_ids) if r.output_token_ids else len(r.output) // per_token
        if prompt + output > limit:
            raise InputError(f"prompt and output are at least {prompt} + {output} tokens, "
                             f"beyond the reference's context of {limit}: a record of another "
                             f"model, or a server that ran past its context",
                             where=r.named(label_))


def render_prompts(records: list[ResponseRecord], labels: list[str], ref: Reference
                   ) -> list[str]:
    """The reference rendering of each record's conversation, with the template variables its
    parameters imply (``reasoning_effort``, as vLLM and SGLang pass it). One the reference's template
    refuses (a ``raise_exception`` for roles it does not take) cannot be checked against
    this reference at all: bad input, named by record, not a server failure."""
    out: list[str] = []
    rendered: dict[str, str] = {}  # one rendering per distinct conversation
    for label_, r in zip(labels, records, strict=True):
        key = f"{r.parameters.reasoning_effort}|{r.conversations.model_dump_json()}"
        if key in rendered:
            out.append(rendered[key])
            continue
        try:
            out.append(rendered.setdefault(key, ref.render(r.conversations,
                                                           parameters=r.parameters)))
        except InputError:  # a template over its limits (reference.sandbox), named whole
            raise
        except Exception as e:
            raise InputError(f"the reference's chat template refuses this conversation "
                             f"({type(e).__name__}: {str(e)[:200]}); it cannot be checked "
                             f"against this reference", where=r.named(label_)) from None
    return out
