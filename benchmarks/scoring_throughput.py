"""Reference scoring throughput: servecheck's own scoring path against the two ways it replaces.

A Gemma-3-1B-shaped reference with random weights (hidden 1152, 26 layers, 4 heads, 1 KV head,
head_dim 256, intermediate 6912, vocab 262144, sliding window 512, bf16) scores synthetic records
of realistic shape (prompts 50-500 tokens, outputs 20-500; greedy, T=0.7 top_p=0.9, T=1, T=1
top_k=40 in turn) through ``servecheck.reference.scoring.score`` -- the call ``check`` makes, every per-token
statistic included. Reported, all in one run on one card:

- scored tokens/s (prompt + output) and peak GPU memory, also at a second vocabulary size;
- model FLOP/s as a fraction of a bf16 matmul measured in the same run (8192³);
- naive HF teacher forcing (padded batch 16 × 512, full logits, float32 log_softmax);
- regeneration with ``generate()`` per request, tokens/s (prompt + output).

    python benchmarks/scoring_throughput.py --out results.json         # one GPU
    torchrun --nproc-per-node=2 benchmarks/scoring_throughput.py --parallel-only   # data parallel
    python benchmarks/scoring_throughput.py --device cpu --builtin --records 48    # the laptop case

Random weights give near-uniform next-token distributions (entropy ≈ ln V), the worst case for
the top_p nucleus; ``--logit-scale`` multiplies the final norm, so logits spread like a trained
model's. The last line of stdout is one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from servecheck.reference.forward import COMPILED_SHAPES, forward_hidden
from servecheck.reference.model import Reference
from servecheck.reference.sampling import HF, Sampling
from servecheck.reference.scoring import plan_batches, score
from servecheck.reference.token_scores import ScoreItem

KINDS = [Sampling(temperature=0.0), Sampling(temperature=0.7, top_p=0.9), Sampling(temperature=1.0),
         Sampling(temperature=1.0, top_k=40)]


def gemma_1b(vocab: int, device: str, logit_scale: float = 1.0) -> Reference:
    """The built-in reference's tokenizer with a Gemma-3-1B-shaped model of random weights."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=1152, intermediate_size=6912,
                           num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1,
                           head_dim=256, sliding_window=512, max_position_embeddings=32768,
                           query_pre_attn_scalar=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    with torch.no_grad():
        model.model.norm.weight.fill_(logit_scale - 1.0)  # Gemma's norm multiplies by (1 + w)
    ref = Reference("builtin", device=device)
    ref.__dict__["model"] = model.eval()
    return ref


def records(n: int, vocab: int, seed: int = 0, max_len: int = 500) -> list[ScoreItem]:
    rng = np.random.default_rng(seed)
    return [ScoreItem(rng.integers(3, vocab, rng.integers(50, max_len + 1)).tolist(),
                      rng.integers(3, vocab, rng.integers(20, max_len + 1)).tolist(),
                      KINDS[i % len(KINDS)], i) for i in range(n)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int = 1) -> float:
    """Median wall time of ``fn()`` (device synchronised)."""
    times = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def matmul_ceiling() -> float:
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(20):
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / float(np.median(times))


def model_flops(ref: Reference, items: list[ScoreItem]) -> float:
    """Matmul FLOPs of scoring: 2·params per token through the layers, attention by its causal
    (or sliding-window) span, and the vocabulary projection at output positions only."""
    cfg = ref.model.config
    body = sum(p.numel() for p in ref.model.get_decoder().layers.parameters())
    head = cfg.vocab_size * cfg.hidden_size
    per_pos = 4 * cfg.num_attention_heads * cfg.head_dim
    flops = 0.0
    for it in items:
        n = len(it.prompt_ids) + len(it.output_ids)
        span = np.arange(1, n + 1)
        for kind in cfg.layer_types:
            width = np.minimum(span, cfg.sliding_window) if kind == "sliding_attention" else span
            flops += per_pos * width.sum()
        flops += 2 * body * n + 2 * head * len(it.output_ids)
    return flops


def forward_only(ref: Reference, items: list[ScoreItem], budget: int) -> None:
    """The decoder alone, batched as ``score`` batches: the floor under the statistics."""
    lengths = [len(it.prompt_ids) + len(it.output_ids) for it in items]
    order = sorted(range(len(items)), key=lambda i: -lengths[i])
    with torch.inference_mode():
        for batch in plan_batches(order, lengths, budget):
            ids = torch.zeros(len(batch), lengths[batch[0]], dtype=torch.long)
            forward_hidden(ref, ids.to(ref.device))


def naive(ref: Reference, batch: int = 16, width: int = 512, repeat: int = 5) -> dict:
    """HF teacher forcing as usually written: padded batch, all logits, float32 log_softmax."""
    ids = torch.randint(3, ref.model.config.vocab_size, (batch, width), device=ref.device)
    mask = torch.ones_like(ids)

    def run() -> None:
        with torch.inference_mode():
            logits = ref.model(input_ids=ids, attention_mask=mask).logits
            logits.float().log_softmax(-1)[:, :-1].gather(2, ids[:, 1:, None])

    run()
    torch.cuda.reset_peak_memory_stats()
    t = timed(run, repeat)
    return {"tokens_per_s": batch * width / t, "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def regenerate(ref: Reference, items: list[ScoreItem], cap: int) -> dict:
    """What the original notes did: ``generate()`` per request, as many tokens as served."""
    tokens, seconds = 0, 0.0
    for it in items:
        s = it.sampling or Sampling()
        new = min(cap, len(it.output_ids))
        kw = (dict(do_sample=False) if s.greedy else
              dict(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None))
        ids = torch.tensor([it.prompt_ids], device=ref.device)
        seconds += timed(lambda ids=ids, new=new, kw=kw: ref.model.generate(
            ids, max_new_tokens=new, min_new_tokens=new, **kw))
        tokens += len(it.prompt_ids) + new
    return {"tokens_per_s": tokens / seconds, "requests": len(items), "output_cap": cap}


def components(ref: Reference, rows: int = 1024) -> dict:
    """Microseconds per row of each step of a logit block, on the model's own hidden states."""
    from servecheck.reference import nucleus, passes
    from servecheck.reference.logit_blocks import block_stats, reference_logits

    vocab = ref.model.config.vocab_size
    items = records(8, vocab)
    with torch.inference_mode():
        ids = torch.tensor((items[0].prompt_ids + items[0].output_ids)[:rows], device=ref.device)
        hidden = ref.model.get_decoder()(input_ids=ids[None], use_cache=False).last_hidden_state[0]
        h = hidden.repeat(rows // len(hidden) + 1, 1)[:rows]
        logits = reference_logits(ref, h)
        tok = torch.randint(0, vocab, (rows,), device=ref.device)
        inv = torch.full((rows,), 1 / 0.7, device=ref.device)
        rp = passes.row_pass(logits, tok, inv)
        cuts = torch.full((rows, 4), -float("inf"), device=ref.device)
        dy = (rp.zy - rp.m) * inv
        th = rp.m[:, None] + torch.linspace(-5, 0, nucleus.THRESHOLDS, device=ref.device)
        every = torch.arange(rows, device=ref.device)
        kth = (logits.topk(40, dim=1).values[:, -1].float() - rp.m) * inv
        cuts40 = torch.stack([kth, kth, kth, kth], 1)
        steps = {"lm_head": lambda: reference_logits(ref, h),
                 "row_pass": lambda: passes.row_pass(logits, tok, inv),
                 "topk_56": lambda: logits.topk(56, dim=1), "topk_256": lambda: logits.topk(256, dim=1),
                 "threshold_pass": lambda: passes.threshold_pass(logits, every, rp.m, inv, th),
                 "support_pass_full": lambda: passes.support_pass(logits, rp.m, inv, cuts, dy, True),
                 "support_pass_notemps": lambda: passes.support_pass(logits, rp.m, inv, cuts, dy, False),
                 "support_pass_top40": lambda: passes.support_pass(logits, rp.m, inv, cuts40, dy, True)}
        for s in KINDS:
            steps[f"block {s.label()}"] = lambda s=s: block_stats(logits, tok, s, HF, None)
        for fn in steps.values():
            fn()  # compile the kernels first
        return {k: timed(fn, 5) / rows * 1e6 for k, fn in steps.items()}


def per_kind(ref: Reference, items: list[ScoreItem], budget: int) -> dict:
    """Each sampling kind alone: seconds of ``score`` and of the decoder on the same batches, and
    the difference per output row (vocabulary projection + statistics + host overhead, in µs)."""
    out = {}
    for kind in KINDS:
        mine = [it for it in items if it.sampling == kind]
        rows = sum(len(it.output_ids) for it in mine)
        t_score = timed(lambda mine=mine: score(ref, mine), 2)
        t_dec = timed(lambda mine=mine: forward_only(ref, mine, budget), 2)
        out[kind.label()] = {"rows": rows, "score_s": t_score, "decoder_s": t_dec,
                             "us_per_row": (t_score - t_dec) / rows * 1e6}
    return out


def scoring_run(ref: Reference, items: list[ScoreItem], repeat: int, **budgets: int) -> dict:
    score(ref, items[:48], **budgets)  # Triton JIT, cuBLAS handles, compiled graphs
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = timed(lambda: score(ref, items, **budgets), repeat)
    tokens = sum(len(it.prompt_ids) + len(it.output_ids) for it in items)
    out = {"tokens": tokens, "seconds": t, "tokens_per_s": tokens / t}
    plain = [i for i, it in enumerate(items[:64]) if it.sampling == KINDS[2]]
    scored = score(ref, [items[i] for i in plain])
    out["mean_entropy_T1_nats"] = float(np.mean(np.concatenate([s.stats["entropy"] for s in scored])))
    if torch.cuda.is_available():
        weights = sum(p.numel() * p.element_size() for p in ref.model.parameters())
        peak = torch.cuda.max_memory_allocated()
        out.update(peak_gib=peak / 2**30, peak_above_weights_gib=(peak - weights) / 2**30)
    return out


def sharded_check(args: argparse.Namespace) -> dict:
    """A reference spread over all GPUs by accelerate (``Reference(path, device="balanced")``)
    scores the same as on one GPU."""
    import shutil

    from servecheck.reference.model import BUILTIN

    ref = gemma_1b(args.vocab, "cuda:0", args.logit_scale)
    items = records(64, args.vocab)
    one = score(ref, items)
    path = Path("/tmp/ref1b")
    ref.model.save_pretrained(path)
    for f in [*BUILTIN.glob("tokenizer*"), BUILTIN / "chat_template.jinja"]:
        shutil.copy(f, path)
    del ref
    torch.cuda.empty_cache()
    spread = Reference(str(path), dtype="bfloat16", device="balanced")
    devices = sorted({str(p.device) for p in spread.model.parameters()})
    t = timed(lambda: score(spread, items))
    many = score(spread, items)
    diff = max(float(abs(a.logprob - b.logprob).max()) for a, b in zip(one, many, strict=True))
    tokens = sum(len(it.prompt_ids) + len(it.output_ids) for it in items)
    return {"devices": devices, "max_abs_logprob_diff": diff, "tokens_per_s": tokens / t}


def parallel_run(args: argparse.Namespace) -> dict:
    from servecheck.reference.parallel import init_from_torchrun, score_data_parallel

    rank, world = init_from_torchrun()
    os.environ["SERVECHECK_COMPILE"] = "1" if args.compile else "0"
    ref = gemma_1b(args.vocab, f"cuda:{torch.cuda.current_device()}", args.logit_scale)
    items = records(args.records, args.vocab)
    score_data_parallel(ref, items[: 48 * world])
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    t = timed(lambda: score_data_parallel(ref, items), args.repeat)
    tokens = sum(len(it.prompt_ids) + len(it.output_ids) for it in items)
    return {"gpus": world, "rank": rank, "tokens_per_s": tokens / t, "seconds": t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=1200, help="synthetic records to score")
    p.add_argument("--vocab", type=int, default=262144)
    p.add_argument("--vocab2", type=int, default=32768, help="second vocabulary, for peak memory")
    p.add_argument("--logit-scale", type=float, default=1.0, help="final-norm scale (see above)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder layers")
    p.add_argument("--token-budget", type=int, default=0, help="tokens per forward (0: default)")
    p.add_argument("--budgets", type=lambda v: [int(x) for x in v.split(",")], default=None,
                   help="several token budgets, one run each (same compiled model)")
    p.add_argument("--scales", type=lambda v: [float(x) for x in v.split(",")], default=None,
                   help="several logit scales, one run each")
    p.add_argument("--repeat", type=int, default=2, help="timed runs (median)")
    p.add_argument("--baselines", action="store_true", help="naive teacher forcing, generate()")
    p.add_argument("--generate-cap", type=int, default=128, help="output tokens per generate()")
    p.add_argument("--breakdown", action="store_true", help="time the decoder alone too")
    p.add_argument("--components", action="store_true", help="µs per row of each block step")
    p.add_argument("--per-kind", action="store_true", help="µs per output row, each kind alone")
    p.add_argument("--profile", action="store_true", help="torch.profiler table of 200 records")
    p.add_argument("--parallel-only", action="store_true", help="under torchrun: data parallel")
    p.add_argument("--sharded-check", action="store_true", help="device_map over all GPUs")
    p.add_argument("--device", default="cuda")
    p.add_argument("--builtin", action="store_true", help="the built-in model (CPU rate)")
    p.add_argument("--out", type=Path, help="write the JSON document here too")
    p.add_argument("--text-only", type=int, default=0, metavar="N",
                   help="only the cost of text-only records: the tokenization search against the "
                        "canonical path on N honest records (benchmarks/text_only_cost.py)")
    args = p.parse_args()
    budgets = {"token_budget": args.token_budget} if args.token_budget else {}
    if args.text_only:
        result = text_only(args)
    elif args.sharded_check:
        os.environ["SERVECHECK_COMPILE"] = "0"
        result = sharded_check(args)
    elif args.parallel_only:
        result = parallel_run(args)
        if result["rank"] != 0:
            return
    elif args.builtin:
        torch.set_num_threads(os.cpu_count() or 1)
        ref = Reference("builtin", device=args.device)
        items = records(args.records, ref.model.config.vocab_size)
        result = {"model": "builtin", "device": args.device, "threads": torch.get_num_threads(),
                  "servecheck": scoring_run(ref, items, args.repeat, **budgets)}
    else:
        result = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "bf16_matmul_tflops": matmul_ceiling() / 1e12, "args": vars(args) | {"out": None}}
        os.environ["SERVECHECK_COMPILE"] = "1" if args.compile else "0"
        ref = gemma_1b(args.vocab, args.device, args.logit_scale)
        if args.compile:
            t = time.perf_counter()
            score(ref, records(8, args.vocab, 1, 600) + records(8, args.vocab, 2, 200), **budgets)
            result["compile_s"] = time.perf_counter() - t
        items = records(args.records, args.vocab)
        flops = model_flops(ref, items)
        runs = []
        for scale in args.scales or [args.logit_scale]:
            with torch.no_grad():
                ref.model.model.norm.weight.fill_(scale - 1.0)
            for budget in args.budgets or [args.token_budget or 0]:
                b = {"token_budget": budget} if budget else {}
                run = scoring_run(ref, items, args.repeat, **b) | {"logit_scale": scale,
                                                                    "token_budget": budget}
                run["model_tflops"] = flops / run["seconds"] / 1e12
                run["fraction_of_ceiling"] = run["model_tflops"] / result["bf16_matmul_tflops"]
                runs.append(run)
        result["servecheck"] = runs[0]
        result["runs"] = runs
        if args.breakdown:
            t = timed(lambda: forward_only(ref, items, args.token_budget or 32768))
            result["decoder_only_tokens_per_s"] = runs[0]["tokens"] / t
        if args.components:
            result["us_per_row"] = components(ref)
        if args.per_kind:
            result["per_kind"] = per_kind(ref, items, args.token_budget or 32768)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                score(ref, items[:200])
            table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=18,
                                              max_name_column_width=50)
            print(table, file=sys.stderr)
            if args.out:
                (args.out.parent / "profile.txt").write_text(table)
        if args.baselines:  # plain HF, eager, as the baselines are written
            for layer in ref.model.get_decoder().layers:
                layer._compiled_call_impl = None
            COMPILED_SHAPES.discard(id(ref.model))
            os.environ["SERVECHECK_COMPILE"] = "0"
            result["naive_hf"] = naive(ref)
            result["generate"] = regenerate(ref, items[:4], args.generate_cap)
        if args.vocab2:
            del ref
            torch.cuda.empty_cache()
            os.environ["SERVECHECK_COMPILE"] = "1" if args.compile else "0"
            ref2 = gemma_1b(args.vocab2, args.device, args.logit_scale)
            result["servecheck_vocab2"] = scoring_run(ref2, items_in(items, args.vocab2)[:400], 1,
                                                      **budgets) | {"vocab": args.vocab2}
    print(json.dumps(result, indent=1), file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def text_only(args: argparse.Namespace) -> dict:
    """The tokenization search's cost against the canonical path, built-in reference (and the
    Gemma-3-1B-shaped one on a GPU), on the same honest text-only records."""
    from text_only_cost import cost, honest_records

    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    records_ = honest_records(args.text_only)
    out = {"device": args.device, "torch": torch.__version__,
           "builtin": cost(Reference("builtin", device=args.device), records_, args.repeat)}
    if args.device.startswith("cuda"):
        out["card"] = torch.cuda.get_device_name()
        os.environ["SERVECHECK_COMPILE"] = "1" if args.compile else "0"
        out["gemma_1b"] = cost(gemma_1b(args.vocab, args.device, args.logit_scale), records_,
                               args.repeat)
    return out


def items_in(items: list[ScoreItem], vocab: int) -> list[ScoreItem]:
    """The same records with token ids folded into a smaller vocabulary."""
    return [ScoreItem([t % vocab for t in it.prompt_ids], [t % vocab for t in it.output_ids],
                      it.sampling, it.seed) for it in items]


if __name__ == "__main__":
    main()
