"""The reference side: template rendering, sandboxing, end markers, the scorer, the tiny models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from servecheck.errors import InputError
from servecheck.formats.conversation import Conversation, Message
from servecheck.reference.model import Reference
from servecheck.reference.scoring import score
from servecheck.reference.token_scores import ScoreItem
from servecheck.tinymodels.build import Recipe, train


def _conv(*turns: tuple[str, str]) -> Conversation:
    return Conversation(contents=[Message(role=r, content=c) for r, c in turns])  # type: ignore[arg-type]


def test_builtin_renders_gemma3_format_exactly(ref: Reference) -> None:
    conv = _conv(("system", "Be brief."), ("user", "  hi  "), ("model", "Hello. "),
                 ("user", "And you?"))
    assert ref.render(conv) == (
        "<bos><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nAnd you?<end_of_turn>\n<start_of_turn>model\n")
    ids = ref.encode(ref.render(conv))
    assert ids[:2] == [ref.tokenizer.bos_token_id, ref.tokenizer.convert_tokens_to_ids(
        "<start_of_turn>")]
    # A plain encode adds BOS, as Gemma's tokenizer does: the root of the double-BOS bug.
    assert ref.tokenizer(ref.render(conv))["input_ids"][:2] == [2, 2]


def test_end_markers_come_from_the_checkpoint(ref: Reference) -> None:
    assert ref.end_markers == ["<end_of_turn>", "<eos>"]
    assert ref.turn_end_marker == "<end_of_turn>"


def test_template_rejecting_a_conversation_is_bad_input(lite_records, tmp_path: Path, run_cli,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A conversation the reference's own template refuses cannot be checked against it: exit 2
    naming the record, never a template failure blamed on the server."""
    bad = lite_records[0].model_copy(deep=True)
    bad.conversations = _conv(("user", "a"), ("user", "b"))  # Gemma's template demands alternation
    path = tmp_path / "r.json"
    path.write_text(json.dumps([bad.model_dump(exclude_none=True)]))
    assert run_cli("check", path, "--reference", "builtin", "--no-progress") == 2
    err = capsys.readouterr().err
    assert "chat template refuses this conversation" in err and "alternate" in err
    assert f"record {bad.id}" in err and "Traceback" not in err


def test_checkpoint_templates_run_sandboxed(tmp_path: Path) -> None:
    """A hostile template in a checkpoint cannot reach Python internals or the OS."""
    ckpt = tmp_path / "hostile"
    Reference("builtin").tokenizer.save_pretrained(ckpt)
    (ckpt / "config.json").write_text("{}")
    marker = tmp_path / "pwned"
    (ckpt / "chat_template.jinja").write_text(
        "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}")
    with pytest.raises(InputError) as info:  # tried when the reference opens: a reference error
        Reference(str(ckpt))
    message = str(info.value)
    assert "chat template does not render" in message and str(ckpt) in message
    assert "unsafe" in message.lower() or "undefined" in message.lower()
    assert not marker.exists()


@pytest.mark.parametrize("template", ["{% for m in messages %}{{ m.content }", "{{ 1 / 0 }}",
                                      "{{ raise_exception('no') }}", "constant"])
def test_a_broken_reference_template_is_a_reference_error(tmp_path: Path, template: str) -> None:
    ckpt = tmp_path / "broken"
    Reference("builtin").tokenizer.save_pretrained(ckpt)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "chat_template.jinja").write_text(template)
    with pytest.raises(InputError, match="chat template"):
        Reference(str(ckpt))


def test_builtin_greedy_answers_are_coherent(ref: Reference) -> None:
    """Facts are right; counting and sums are well-formed (a 1M-parameter model is no calculator);
    every answer ends with the end-of-turn marker."""
    import re

    from servecheck.tinymodels import corpus

    facts = [(f"What does the {a} say?", f"The {a} says {corpus.SOUNDS[a]}.") for a in
             corpus.ANIMALS] + [(f"Where does the {a} live?", f"The {a} lives in "
                                 f"{corpus.HOMES[a]}.") for a in corpus.ANIMALS]
    shaped = [("Count from 4 to 8.", r"4(, \d+)+\."), ("What is 3 plus 5?", r"3 plus 5 is \d+\."),
              ("Tell me a story about the owl.", r"The \w+ owl \w+ to the \w+\..*")]
    right = 0
    for question, want in facts + shaped:
        prompt = ref.render(_conv(("user", question)))
        ids = torch.tensor([ref.encode(prompt)])
        out = ref.model.generate(ids, max_new_tokens=40, do_sample=False,
                                 eos_token_id=ref.end_ids)
        answer = ref.decode(out[0, ids.shape[1]:].tolist())
        assert answer.endswith("<end_of_turn>"), answer
        answer = answer.removesuffix("<end_of_turn>")
        if (question, want) in shaped:
            assert re.fullmatch(want, answer), answer
        else:
            right += answer == want
    assert right >= 0.9 * len(facts)


def test_builtin_mixes_peaked_and_flat_positions(ref: Reference, lite_records) -> None:
    """The statistics need both: positions with one right token and positions with many."""
    entropies = []
    for r in lite_records:
        ids = torch.tensor([(r.prompt_token_ids or []) + (r.output_token_ids or [])])
        with torch.inference_mode():
            logits = ref.model(ids).logits[0, len(r.prompt_token_ids or []) - 1:-1]
        p = logits.log_softmax(-1)
        entropies += (-(p.exp() * p).sum(-1)).tolist()
    e = np.array(entropies)
    assert (e < 0.1).mean() > 0.3, "peaked positions"
    assert (e > 1.0).mean() > 0.05, "flat positions"


def _check_scores_against_full_logits(ref: Reference, items: list[ScoreItem]) -> None:
    got = score(ref, items, token_budget=64, logit_budget=5000)  # tiny budgets: many blocks
    for item, s in zip(items, got, strict=True):
        ids = torch.tensor([item.prompt_ids + item.output_ids])
        with torch.inference_mode():
            lp = ref.model(ids).logits[0].float().log_softmax(-1)
        pos = torch.arange(len(item.prompt_ids) - 1, ids.shape[1] - 1)
        want = lp[pos, torch.tensor(item.output_ids)].numpy()
        np.testing.assert_allclose(s.logprob, want, atol=1e-4)
        np.testing.assert_array_equal(s.argmax, lp[pos].argmax(-1).numpy())
        assert (s.rank[s.token_ids == s.argmax] == 0).all()
        assert (s.margin >= -1e-6).all()


def test_scorer_matches_full_forward_gemma(ref: Reference, lite_records) -> None:
    items = [ScoreItem(r.prompt_token_ids or [], r.output_token_ids or [])
             for r in lite_records[::5]]
    _check_scores_against_full_logits(ref, items)


@pytest.fixture(scope="session")
def llama_chatml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second family: Llama weights, ChatML template, no BOS, <|im_end|> as end of turn."""
    out = tmp_path_factory.mktemp("llama-chatml")
    train(Recipe(arch="llama-chatml", steps=150, hidden=64, layers=2, intermediate=128,
                 heads=2, kv_heads=1, vocab_size=1024, lr=1e-2, chats=3000), out, log_every=0)
    return out


@pytest.mark.slow  # trains the Llama/ChatML model (15 s)
def test_scorer_matches_full_forward_llama(llama_chatml: Path) -> None:
    ref = Reference(str(llama_chatml))
    prompt = ref.encode(ref.render(_conv(("user", "Name a color."))))
    items = [ScoreItem(prompt, ref.encode("Blue.<|im_end|>")),
             ScoreItem(prompt[:-1], ref.encode(" The cat says meow.<|im_end|>"))]
    _check_scores_against_full_logits(ref, items)


@pytest.mark.slow  # trains the Llama/ChatML model, generates twice
def test_other_family_checks_end_to_end(llama_chatml: Path, tmp_path: Path, run_cli, check_json,
                                        check_named, lite_prompts: Path) -> None:
    ref = Reference(str(llama_chatml))
    assert ref.end_markers == ["<|im_end|>"] and ref.tokenizer.bos_token is None
    out = tmp_path / "r.json"
    assert run_cli("generate", lite_prompts, "--target", f"hf:{llama_chatml}", "--out", out,
                   "--no-progress") == 0
    code, summary = check_json(out, tmp_path, str(llama_chatml))
    assert code == 0, summary
    assert check_named(summary, "greedy")["details"]["tokens"] > 0
    # and a template fault is still named on this family
    bad = tmp_path / "bad.json"
    assert run_cli("generate", lite_prompts, "--target", f"hf:{llama_chatml}?fault=drop-system",
                   "--out", bad, "--no-progress") == 0
    code, summary = check_json(bad, tmp_path, str(llama_chatml))
    assert code == 1
    assert "system prompt dropped" in check_named(summary, "template")["summary"]


@pytest.mark.slow  # trains two tiny models
def test_build_is_deterministic(tmp_path: Path) -> None:
    recipe = Recipe(steps=4, hidden=64, layers=2, intermediate=128, vocab_size=512, chats=200)
    digests = []
    for name in ("a", "b"):
        train(recipe, tmp_path / name, log_every=0)
        digests.append(hashlib.sha256((tmp_path / name / "model.safetensors").read_bytes())
                       .hexdigest())
    assert digests[0] == digests[1]


def _checkpoint(tmp_path: Path, template: str) -> str:
    ckpt = tmp_path / "ckpt"
    Reference("builtin").tokenizer.save_pretrained(ckpt)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "chat_template.jinja").write_text(
        template + "{% for m in messages %}{{ m.content }}{% endfor %}")
    return str(ckpt)


@pytest.mark.parametrize(("template", "expect"), [
    ("{{ 10 ** (10 ** 10) }}", "computes an integer over 65,536 bits with '**' (no chat template "
                               "needs one)"),
    ("{{ 'x' * 10**10 }}", "builds a value of 10,000,000,000 items with '*', over 16 Mi "
                           "characters (raise with --template-max-mb MB)"),
    ("{{ 10**10 * ['x'] }}", "with '*'"),
    ("{% set s = 'x' * 2**23 %}{{ s + s + s }}", "with '+'"),
    ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
     "rendered over 16 Mi characters (raise with --template-max-mb MB)"),
    ("{% set b %}{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}{% endset %}",
     "rendered over 16 Mi characters"),
])
def test_a_template_that_builds_too_much_is_refused_at_once(tmp_path: Path, template: str,
                                                            expect: str) -> None:
    """Powers and repeats ran for minutes or asked for gigabytes (in one C call, not stoppable
    by a timer): refused before they are computed, naming the checkpoint and the flag."""
    import time

    from servecheck.reference.sandbox import TemplateTooCostly

    ckpt = _checkpoint(tmp_path, template)
    start = time.monotonic()
    with pytest.raises(TemplateTooCostly) as e:
        Reference(ckpt)
    assert time.monotonic() - start < 5
    assert str(e.value).startswith(f"{ckpt}: the chat template ") and expect in str(e.value)


def test_a_template_that_renders_too_long_is_refused(tmp_path: Path) -> None:
    import signal
    import time

    from servecheck.reference.sandbox import TemplateLimits, TemplateTooCostly, template_limits

    ckpt = _checkpoint(tmp_path, "{% for i in range(100000) %}{% for j in range(100000) %}"
                                 "{% endfor %}{% endfor %}")
    outer = signal.getsignal(signal.SIGALRM)
    signal.setitimer(signal.ITIMER_REAL, 60)  # a harness's own alarm: kept, and re-armed
    try:
        start = time.monotonic()
        with template_limits(TemplateLimits(timeout_s=0.5)), pytest.raises(TemplateTooCostly) as e:
            Reference(ckpt)
        assert time.monotonic() - start < 10
        assert str(e.value) == (f"{ckpt}: the chat template took over 0.5 s to render (raise "
                                f"with --template-timeout S)")
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 40 < left <= 60 and signal.getsignal(signal.SIGALRM) is outer
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def test_bounded_rendering_is_byte_identical_to_transformers(monkeypatch: pytest.MonkeyPatch,
                                                            lite_records) -> None:
    """The bounded environment changes nothing a template within bounds renders: the same
    conversations through transformers' own sandbox give the same bytes."""
    import jinja2.sandbox
    import transformers.utils.chat_template_utils as ctu

    refs = [Reference("builtin"), Reference("builtin-tools")]
    convs = [r.conversations for r in lite_records]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}}}}]
    kwargs = [{}, {"tools": tools}, {"enable_thinking": False}]
    bounded = [ref.render_messages(c.hf_messages(), **k) for ref in refs for c in convs
               for k in (kwargs if ref.spec == "builtin-tools" else kwargs[:1])]
    assert ctu.ImmutableSandboxedEnvironment.__name__ == "BoundedSandbox"
    monkeypatch.setattr(ctu, "ImmutableSandboxedEnvironment",
                        jinja2.sandbox.ImmutableSandboxedEnvironment)
    ctu._compile_jinja_template.cache_clear()
    plain = [ref.tokenizer.apply_chat_template(c.hf_messages(), tokenize=False,
                                               add_generation_prompt=True, **k)
             for ref in refs for c in convs
             for k in (kwargs if ref.spec == "builtin-tools" else kwargs[:1])]
    ctu._compile_jinja_template.cache_clear()
    assert bounded == plain and len(set(plain)) > 10
