"""Text-only records: the latent tokens, the ids-vs-text check, the original notes' own fields.

Everything here is real: the built-in model generating with HF's sampler, Qwen2's real 151k
byte-level vocabulary (``qwen2_tokenizer``), the ``servecheck`` command. The statistical checks
run at α = 0.01 on fixed seeds, so a correct server's set fails by chance at most that often.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from servecheck.checks import run_checks
from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.options import CheckOptions
from servecheck.collect.targets.hf import HFTarget
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request, request_id
from servecheck.formats.records import ResponseRecord
from servecheck.reference.model import Reference
from servecheck.reference.sampling import Sampling
from servecheck.reference.tokenization import SEARCHED, TokenBytes, propose

CAPITALS = "Answer in capital letters."


def _requests(prompts: list[str], params: list[dict], seeds: range) -> list[Request]:
    out = []
    for k, (prompt, p, seed) in enumerate((a, b, c) for a in prompts for b in params for c in seeds):
        conv = Conversation(contents=[Message(role="system", content=CAPITALS),
                                      Message(role="user", content=prompt)])
        params_ = Parameters(**p, seed=seed, max_tokens=40)
        out.append(Request(request_id(conv, params_, k), conv, params_))
    return out


def _collect(target: HFTarget, requests: list[Request]) -> list[ResponseRecord]:
    groups: dict[tuple, list[Request]] = defaultdict(list)
    for r in requests:
        groups[(Sampling.of(r.parameters), r.parameters.seed)].append(r)
    return [rec for g in groups.values() for rec in target.generate_batch(g)]


def text_only(records: list[ResponseRecord]) -> list[ResponseRecord]:
    """What the original notes' response.json holds: the four fields, nothing else."""
    return [ResponseRecord(conversations=r.conversations, parameters=r.parameters, input=r.input,
                           output=r.output) for r in records]


@pytest.fixture(scope="module")
def capitals() -> list[ResponseRecord]:
    """An honest server told to answer in capitals: it spells words in pieces (``L``, ``L``)
    that the tokenizer would merge (``LL``)."""
    prompts = ["Name a color.", "Spell the word green.", "Where does the bird live?",
               "Name an animal.", "Tell me a story about the fox.", "What does the cat say?"]
    params = [dict(temperature=0.0), dict(temperature=0.7, top_p=0.9),
              dict(temperature=1.0, top_k=40)]
    return _collect(HFTarget("builtin"), _requests(prompts, params, range(1, 5)))


def test_capitals_are_not_canonical(capitals: list[ResponseRecord], ref: Reference) -> None:
    """The premise: some served ids are not the canonical tokenization of their own text."""
    off = [r for r in capitals if ref.encode(r.output) != r.output_token_ids]
    assert len(off) >= 3, "no non-canonical output: the set would test nothing"


def test_honest_text_only_set_passes(capitals: list[ResponseRecord], tmp_path: Path, check_json,
                                     write_records) -> None:
    report = tmp_path / "report.html"
    code, summary = check_json(write_records(tmp_path / "text.json", text_only(capitals)),
                               tmp_path, "builtin", "--report", report)
    assert code == 0, [c["summary"] for c in summary["checks"] if c["verdict"] == "fail"]
    page = report.read_text()
    assert f"scored tokens: {SEARCHED} (non-canonical at output token(s)" in page
    assert re.search(r'class="tok[^"]* split[^"]*" style="background:', page)  # a heat-map token
    tokens = summary["tokens"]
    chosen = [r for r in tokens["records"] if r["source"] == SEARCHED]
    assert chosen and all(r["non_canonical_at"] for r in chosen)
    assert tokens["sources"][SEARCHED] == len(chosen)


def test_canonical_tokens_would_fail_it(capitals: list[ResponseRecord], ref: Reference) -> None:
    """Without the search, the same honest set fails: the test above can fail."""
    results = run_checks(CheckContext(text_only(capitals), ref, CheckOptions(search_tokens=False)))
    failed = {r.name for r in results if r.verdict == "fail"}
    assert failed & {"greedy", "support"}, failed


def test_search_recovers_the_served_ids(capitals: list[ResponseRecord], ref: Reference) -> None:
    ctx = CheckContext(text_only(capitals), ref)
    ctx.prefetch()
    ends = set(ref.end_ids)
    same = 0
    for i, r in enumerate(capitals):
        ids = r.output_token_ids or []
        cut = next((k + 1 for k, t in enumerate(ids) if t in ends), len(ids))
        same += ctx.output_ids(i)[0] == ids[:cut]
    assert same >= 0.95 * len(capitals)
    greedy = [i for i, r in enumerate(capitals) if r.parameters.greedy]
    for i in greedy:  # exact for greedy: the argmax path is found whenever it exists
        assert ctx.output_ids(i)[0] == (capitals[i].output_token_ids or [])[:len(ctx.output_ids(i)[0])]


def test_split_of_a_merged_token(ref: Reference) -> None:
    tb = TokenBytes(ref.tokenizer)
    ids = ref.encode("HELLO")
    pieces = ref.tokenizer.convert_ids_to_tokens(ids)
    assert "LL" in pieces
    k = pieces.index("LL")
    argmax = np.array(ids)
    argmax[k] = ref.encode("L")[0]
    p = propose(ids, argmax, tb, ref.encode, set(ref.special_ids), np.zeros(len(ids), bool))
    assert p is not None and p.departures == (k,)
    assert ref.tokenizer.convert_ids_to_tokens(p.ids)[k:k + 2] == ["L", "L"]
    assert tb.joined(p.ids) == b"HELLO"


def test_real_byte_level_vocabulary(qwen2_tokenizer: Path) -> None:
    """Qwen2's 151k tokens: bytes join back to any text, and a split inside a multi-byte
    character (a byte token the argmax points to) stays byte-exact."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen2_tokenizer)
    tb = TokenBytes(tok)

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    text = "HELLO LLLL WORLD ünïcödé 🙂,日本語<|im_end|>"
    ids = encode(text)
    assert tb.joined(ids) == text.encode()
    pieces = [tb(t) for t in ids]
    k = next(j for j, p in enumerate(pieces) if p.startswith("日".encode()))
    first_byte = tb.byte_token("日".encode()[0])
    assert first_byte is not None
    argmax = np.array(ids)
    argmax[k] = first_byte
    specials = {t for t in tok.all_special_ids}
    p = propose(ids, argmax, tb, encode, specials, np.zeros(len(ids), bool))
    assert p is not None and p.ids[p.departures[0]] == first_byte
    assert tb.joined(p.ids) == text.encode()


def _random_capitals_model(qwen2_tokenizer: Path, out: Path) -> Path:
    """A random Llama over Qwen2's vocabulary whose head can only say capital-letter tokens, so
    its greedy text is printable and its tokens are often not the canonical ones."""
    import re

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(qwen2_tokenizer)
    tb = TokenBytes(tok)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=False, eos_token_id=end, bos_token_id=None,
                      pad_token_id=end)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    allowed = [t for t in range(len(tok)) if re.fullmatch(rb" ?[A-F]{1,3}", tb(t))]
    with torch.no_grad():
        head = model.lm_head.weight
        keep = head[allowed].clone() * 20
        head.zero_()
        head[allowed] = keep
    model.save_pretrained(out)
    tok.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    return out


@pytest.mark.slow  # builds and runs a model over a 151k vocabulary (11 s)
def test_greedy_is_exact_on_a_real_vocabulary(qwen2_tokenizer: Path, tmp_path: Path) -> None:
    path = _random_capitals_model(qwen2_tokenizer, tmp_path / "capitals")
    target = HFTarget(str(path))
    prompts = ["Say something.", "Go on.", "Spell it.", "Again.", "More.", "Once more."]
    records = _collect(target, [Request(f"r{k}", r.conversation, r.parameters) for k, r in
                                enumerate(_requests(prompts, [dict(temperature=0.0)], range(1, 2)))])
    ref = Reference(str(path))
    assert sum(ref.encode(r.output) != r.output_token_ids for r in records) >= 3
    results = {r.name: r for r in run_checks(CheckContext(text_only(records), ref))}
    assert results["greedy"].verdict == "pass", results["greedy"].summary
    canonical = {r.name: r for r in run_checks(CheckContext(text_only(records), ref,
                                                            CheckOptions(search_tokens=False)))}
    assert canonical["greedy"].verdict == "fail"


def test_ids_that_decode_to_other_text_fail(capitals: list[ResponseRecord], tmp_path: Path,
                                            check_json, check_named, write_records) -> None:
    records = [r.model_copy(deep=True) for r in capitals[:12]]
    victim = records[3]
    at = victim.output.find(" ")
    assert at > 0
    victim.output = victim.output[:at] + victim.output[at + 1:]  # a streamed space dropped
    code, summary = check_json(write_records(tmp_path / "r.json", records), tmp_path)
    assert code == 1
    detok = check_named(summary, "detokenization")
    assert detok["verdict"] == "fail" and detok["findings_total"] == 1
    message = detok["findings"][0]["message"]
    assert detok["findings"][0]["record"] == victim.id
    assert f"differ from character {at}" in message and "the ids give ' '" in message
    assert "output token" in message


def test_ids_with_a_stripped_end_marker_agree(capitals: list[ResponseRecord], tmp_path: Path,
                                              check_json, check_named, write_records) -> None:
    records = [r.model_copy(deep=True) for r in capitals[:12]]
    for r in records:
        r.output = r.output.replace("<end_of_turn>", "")
        r.finish_reason = "stop"
    _, summary = check_json(write_records(tmp_path / "r.json", records), tmp_path)
    assert check_named(summary, "detokenization")["verdict"] == "pass"


def _seed_native(records: list[ResponseRecord]) -> list[dict]:
    """Records as the original notes' generate_responses.py writes them: the prompts file's
    variation keys, prompt and system_prompt included, inside parameters."""
    out = []
    for r in records:
        d = {"conversations": r.conversations.model_dump(), "input": r.input, "output": r.output,
             "parameters": r.parameters.model_dump(exclude_none=True)}
        turns = r.conversations.contents
        d["parameters"]["system_prompt"] = turns[0].content if turns[0].role == "system" else None
        d["parameters"]["prompt"] = turns[-1].content
        out.append(d)
    return out


def test_seed_native_parameters_are_accepted(capitals: list[ResponseRecord], tmp_path: Path,
                                             check_json) -> None:
    path = tmp_path / "response.json"
    path.write_text(json.dumps(_seed_native(capitals[:8])))
    code, summary = check_json(path, tmp_path)
    assert code == 0 and summary["records"] == 8


@pytest.mark.parametrize("field, value, expect", [
    ("system_prompt", "Be loud.", "'parameters.system_prompt' ('Be loud.') disagrees"),
    ("prompt", "Something else?", "'parameters.prompt' ('Something else?') disagrees"),
    ("stray_key", 1, "unknown field 'parameters.stray_key'"),
])
def test_inconsistent_seed_native_parameters_are_named(capitals: list[ResponseRecord],
                                                       tmp_path: Path, capsys, field: str,
                                                       value: object, expect: str, run_cli) -> None:
    rows = _seed_native(capitals[:8])
    rows[5]["parameters"][field] = value
    path = tmp_path / "response.json"
    path.write_text(json.dumps(rows))
    assert run_cli("check", path, "--reference", "builtin") == 2
    err = capsys.readouterr().err
    assert f"{path} record 5" in err and expect in err


def test_served_logprobs_that_stop_lining_up_are_named(capitals: list[ResponseRecord],
                                                       ref: Reference, tmp_path: Path) -> None:
    """A text that lost a sampled token while its served log-probs kept it: named, not averaged."""
    records = [r.model_copy(deep=True) for r in capitals]
    victim = next(r for r in records if len(r.output_token_ids or []) > 8 and
                  r.parameters.temperature == 1.0)
    ids = list(victim.output_token_ids or [])
    victim.output = ref.decode(ids[:3] + ids[4:])
    for r in records:
        r.output_token_ids = r.prompt_token_ids = None
    results = {r.name: r for r in run_checks(CheckContext(records, ref))}
    lp = results["logprobs"]
    assert lp.verdict == "fail", lp.summary
    assert [f.record for f in lp.findings] == [victim.id]
    assert "stop lining up" in lp.findings[0].message


def test_bytes_lost_in_detokenization_end_the_scoring(capitals: list[ResponseRecord],
                                                      tmp_path: Path, check_json, write_records) -> None:
    """A hot sampler's stray byte token is no whole character; decoding the text replaced it
    with U+FFFD, so its bytes (and the context of what follows) are unknown. Scoring them would
    show the reference three tokens nobody sampled; the record is scored up to there instead."""
    records = text_only([r.model_copy(deep=True) for r in capitals])
    victim = next(r for r in records if r.parameters.temperature == 1.0 and " " in r.output[5:])
    at = victim.output.index(" ", 5)
    victim.output = victim.output[:at] + "\ufffd\ufffd QZXJ QZXJ" + victim.output[at:]
    code, summary = check_json(write_records(tmp_path / "r.json", records), tmp_path)
    assert code == 0, [c["summary"] for c in summary["checks"] if c["verdict"] == "fail"]
    (row,) = [r for r in summary["tokens"]["records"] if "scored_up_to_char" in r]
    assert row["scored_up_to_char"] == at
