"""A structured output is scored under its grammar's masks (``ScoreItem.allowed``): the
reference's logits masked to the allowed tokens and renormalised before the sampling transform,
as vLLM applies its bitmask before the sampler; a watched set's mass (``watched``) is what the
transform gives it. Checked against the definition on one item alone (exact arithmetic, no
statistics: no false-failure rate to state)."""

from __future__ import annotations

import numpy as np
import torch

from servecheck.reference.logit_blocks import unpack_bits
from servecheck.reference.model import Reference
from servecheck.reference.sampling import HF, Sampling, transform
from servecheck.reference.scoring import score
from servecheck.reference.token_scores import ScoreItem


def _pack(allowed: np.ndarray) -> np.ndarray:
    """bool [T, V] as xgrammar's int32 bitmask [T, ⌈V/32⌉] (bit j of word w: token 32w + j)."""
    rows, vocab = allowed.shape
    padded = np.zeros((rows, -(-vocab // 32) * 32), dtype=bool)
    padded[:, :vocab] = allowed
    weights = (np.uint64(1) << np.arange(32, dtype=np.uint64))
    words = (padded.reshape(rows, -1, 32).astype(np.uint64) * weights).sum(-1)
    return words.astype(np.uint32).view(np.int32)


def test_bits_unpack_to_the_mask() -> None:
    allowed = np.random.default_rng(1).random((5, 70)) < 0.4
    got = unpack_bits(torch.from_numpy(_pack(allowed)), 75).numpy()
    assert (got[:, :70] == allowed).all() and not got[:, 70:].any()


def test_masked_scores_are_the_renormalised_reference(ref: Reference) -> None:
    rng = np.random.default_rng(0)
    vocab = ref.model.config.vocab_size
    prompt = rng.integers(3, vocab, 20).tolist()
    output = rng.integers(3, vocab, 12).tolist()
    allowed = rng.random((len(output), vocab)) < 0.3
    allowed[np.arange(len(output)), output] = True
    watch = rng.random(vocab) < 0.2
    kinds = [Sampling(temperature=0.0), Sampling(temperature=0.7, top_p=0.9), Sampling()]
    items = [ScoreItem(prompt, output, s, j, _pack(allowed), watch) for j, s in enumerate(kinds)]
    ids = torch.tensor([prompt + output])
    with torch.inference_mode():
        logits = ref.model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    masked = logits.masked_fill(~torch.from_numpy(allowed), float("-inf"))
    tok = torch.tensor(output)
    want_lp = masked.log_softmax(-1).gather(1, tok[:, None])[:, 0].numpy()
    for item, got in zip(items, score(ref, items), strict=True):
        np.testing.assert_allclose(got.logprob, want_lp, atol=2e-4)
        assert (got.argmax == masked.argmax(-1).numpy()).all()
        assert allowed[np.arange(len(output)), got.argmax].all()
        s = item.sampling
        assert s is not None
        if s.greedy:
            continue
        logq = transform(masked, s, HF)
        np.testing.assert_allclose(got.stats["logq"], logq.gather(1, tok[:, None])[:, 0].numpy(),
                                   atol=2e-4)
        np.testing.assert_allclose(got.stats["watched"],
                                   logq[:, torch.from_numpy(watch)].exp().sum(-1).numpy(), atol=2e-5)


def test_items_without_a_mask_report_no_watched_mass(ref: Reference) -> None:
    (got,) = score(ref, [ScoreItem([5, 6, 7], [8, 9], Sampling(), 0)])
    assert np.isnan(got.stats["watched"]).all()
