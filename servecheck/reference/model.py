"""The Hugging Face reference: a local checkpoint (or the built-in one), its tokenizer and template.

Everything the checks know about "correct" comes from here: the chat template (rendered by
transformers, which runs checkpoint templates in a sandboxed Jinja environment), the end-of-turn
markers (from the generation config and tokenizer, never hard-coded), and the model for teacher
forcing. Loading is strictly local: no hub, no network.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from servecheck.errors import InputError
from servecheck.formats.conversation import Conversation
from servecheck.formats.parameters import Parameters, template_variables
from servecheck.reference.sandbox import TemplateTooCostly, bounded_render, check_output

BUILTIN = Path(__file__).parents[1] / "tinymodels" / "builtin"
BUILTIN_TOOLS = Path(__file__).parents[1] / "tinymodels" / "builtin-tools"
"""The second built-in model: Qwen3, a Hermes-style template with tools and thinking."""
BUILTINS = {"builtin": BUILTIN, "builtin-tools": BUILTIN_TOOLS}
HIDEABLE = 16
"""Special tokens tried as skipped by a detokenizer, at most (``Reference.hideable_ids``)."""
ENCODE_CACHE = 200_000
"""Texts whose tokens are kept (a bound on memory: past it, texts are tokenized each time)."""

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def resolve(spec: str) -> Path:
    """``builtin``, ``builtin-tools`` or a local checkpoint folder; anything else is a clear
    input error."""
    path = BUILTINS.get(spec) or Path(spec)
    if not path.is_dir():
        raise InputError("not a folder (expected a local Hugging Face checkpoint, 'builtin' or "
                         "'builtin-tools')",
                         where=spec)
    for needed in ("config.json", "tokenizer_config.json"):
        if not (path / needed).exists():
            raise InputError(f"not a Hugging Face checkpoint: {needed} missing", where=spec)
    return path


class Reference:
    """A checkpoint opened for rendering, tokenizing and (lazily) teacher forcing."""

    def __init__(self, spec: str = "builtin", dtype: str = "float32", device: str = "cpu") -> None:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.spec = spec
        self._encoded: dict[str, tuple[int, ...]] = {}
        self.path = resolve(spec)
        self.dtype = dtype
        self.device = device
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except Exception as e:
            raise InputError(f"cannot load the tokenizer: {e}", where=spec) from None
        if not self.tokenizer.chat_template:
            raise InputError("the checkpoint has no chat template", where=spec)
        self._try_template()

    def _try_template(self) -> None:
        """Render one plain turn now: a template that is broken, or that the sandbox stops
        (a hostile one), is the reference's fault and must say so before any work, never
        surface later as every record "differing from the reference"."""
        try:
            rendered = self.render_messages([{"role": "user", "content": "ping"}])
        except TemplateTooCostly:
            raise
        except Exception as e:  # jinja2 syntax, sandbox SecurityError, a raise_exception(), …
            raise InputError(f"the chat template does not render a one-turn conversation "
                             f"({type(e).__name__}: {str(e)[:200]}): fix the template in the "
                             f"checkpoint", where=self.spec) from None
        if not isinstance(rendered, str) or "ping" not in rendered:
            raise InputError("the chat template renders a one-turn conversation without its "
                             "message: fix the template in the checkpoint", where=self.spec)

    @cached_property
    def vocab_size(self) -> int:
        """How many token ids the model has (its embedding rows; at least the tokenizer's)."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        config = getattr(config, "text_config", None) or config
        return max(len(self.tokenizer), int(getattr(config, "vocab_size", 0) or 0))

    @cached_property
    def longest_token_chars(self) -> int:
        """The most characters one vocabulary entry spells: a text of n characters is at least
        n / this many tokens, a bound that needs no tokenizing (a 15 MB output took 27 s and
        2.6 GB to tokenize, only to be refused)."""
        return max(1, max((len(t) for t in self.tokenizer.get_vocab()), default=1))

    @cached_property
    def context_length(self) -> int | None:
        """The most positions the model takes (``max_position_embeddings``), when it says."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        config = getattr(config, "text_config", None) or config
        value = getattr(config, "max_position_embeddings", None)
        return int(value) if value else None

    @cached_property
    def model(self):
        import torch
        from transformers import AutoModelForCausalLM

        # "auto" / "balanced": accelerate's device_map spreads a reference over the GPUs (auto
        # fills the first GPU first, balanced shares the layers out evenly)
        placement = {"device_map": self.device} if self.device in ("auto", "balanced") else {}
        try:
            model = AutoModelForCausalLM.from_pretrained(
                self.path, dtype=getattr(torch, self.dtype), local_files_only=True, **placement)
        except Exception as e:
            raise InputError(f"cannot load the model weights: {e}", where=self.spec) from None
        return (model if placement else model.to(self.device)).eval()

    @cached_property
    def generation_config(self):
        from transformers import GenerationConfig

        try:
            return GenerationConfig.from_pretrained(self.path, local_files_only=True)
        except OSError:
            return None

    def render(self, conversation: Conversation, add_generation_prompt: bool = True,
               parameters: Parameters | None = None) -> str:
        """The reference prompt: ``apply_chat_template(messages, tools=…,
        add_generation_prompt=True, **chat_template_kwargs)``, and the variables the request's
        ``parameters`` imply (``reasoning_effort``: ``formats.parameters.template_variables``)."""
        variables = template_variables(conversation, parameters) if parameters is not None \
            else conversation.template_kwargs()
        return self.render_messages(conversation.hf_messages(), add_generation_prompt,
                                    **variables)

    def render_messages(self, messages: list[dict], add_generation_prompt: bool = True,
                        **kwargs) -> str:
        """``apply_chat_template`` as transformers renders it, within the time and size bounds
        of ``reference.sandbox`` (``TemplateTooCostly`` past one)."""
        with bounded_render(self.spec):
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)
        check_output(text, self.spec)
        return text

    def encode(self, text: str) -> list[int]:
        """Tokens of already-templated text: the template owns the special tokens. Cached: a
        prompts matrix repeats each prompt once per seed and setting."""
        cached = self._encoded.get(text)
        if cached is None:
            cached = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._encoded) < ENCODE_CACHE:
                self._encoded[text] = cached
        return list(cached)

    def encode_many(self, texts: list[str]) -> None:
        """Tokenize the texts not yet cached in one batch call (the Rust tokenizer's threads),
        so that per-record ``encode`` calls afterwards are lookups."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._encoded))
        for at in range(0, len(todo), 4096):
            chunk = todo[at:at + 4096]
            ids = self.tokenizer(chunk, add_special_tokens=False)["input_ids"]
            for text, tokens in zip(chunk, ids, strict=True):
                if len(self._encoded) < ENCODE_CACHE:
                    self._encoded[text] = tuple(tokens)

    def forget_encodings(self) -> None:
        """Drop the cached tokens (between the chunks of a large run: the next chunk's texts
        are others, and the cache has a bound)."""
        self._encoded.clear()

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    @cached_property
    def end_ids(self) -> list[int]:
        """Token ids that end a turn: generation config first, then the tokenizer's eos."""
        ids: list[int] = []
        eos = getattr(self.generation_config, "eos_token_id", None)
        ids += eos if isinstance(eos, list) else [eos] if eos is not None else []
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return list(dict.fromkeys(ids))

    @cached_property
    def end_markers(self) -> list[str]:
        """End markers as text, the turn-closing one first (e.g. ``<end_of_turn>`` for Gemma)."""
        markers = [self.tokenizer.convert_ids_to_tokens(i) for i in self.end_ids]
        closing = self.turn_end_marker
        return sorted(markers, key=lambda m: m != closing)

    @cached_property
    def turn_end_marker(self) -> str | None:
        """The special token the template writes after an answer, found by rendering one."""
        probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
        try:
            text = self.render_messages(probe, add_generation_prompt=False)
        except Exception:
            return None
        tail = text[text.rfind("ok") + 2:]
        for token in sorted(self.special_tokens, key=len, reverse=True):
            if tail.lstrip().startswith(token):
                return token
        return None

    @cached_property
    def special_tokens(self) -> list[str]:
        tok = self.tokenizer
        added = [t.content for t in tok.added_tokens_decoder.values() if t.special]
        return list(dict.fromkeys([*tok.all_special_tokens, *added]))

    @cached_property
    def hideable_ids(self) -> list[int]:
        """Special tokens a model may emit inside an answer that a detokenizer skipping special
        tokens (vLLM's and llama.cpp's default) leaves no trace of in the text: the template's
        own markers (``<start_of_turn>``, ``<|im_start|>``, found by rendering a conversation)
        and the tokenizer's declared specials (``<pad>``, ``<unk>``, ``<bos>``: an undertrained
        one keeps some probability), less the end markers, which end the answer instead. At
        most ``HIDEABLE`` of them: each is one more proposal where a token looks lost."""
        probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                 {"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]
        text = ""
        for messages in (probe, probe[1:]):
            try:
                text = self.render_messages(messages)
                break
            except Exception:
                continue
        ends = set(self.end_ids)
        marks = self.tokenizer.convert_tokens_to_ids([t for t in self.special_tokens if t in text])
        ids = [*marks, *self.tokenizer.all_special_ids]
        return sorted({i for i in ids if i is not None and i not in ends})[:HIDEABLE]

    @cached_property
    def special_ids(self) -> list[int]:
        """Ids of the special tokens: atomic, whatever text they spell."""
        tok = self.tokenizer
        return sorted({i for i, t in tok.added_tokens_decoder.items() if t.special}
                      | set(tok.all_special_ids))

    def strip_special(self, text: str) -> str:
        for t in self.special_tokens:
            text = text.replace(t, "")
        return text
