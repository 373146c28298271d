"""Build and train the tiny chat models servecheck ships and tests with.

No weights can be downloaded, so the built-in reference (``builtin``) is made here: a Gemma 3
text model (``Gemma3ForCausalLM``) with Gemma's special tokens and its exact chat template,
trained for a few minutes on 2 CPU cores on the synthetic chats of ``corpus.py``. The same code
builds a model of another family (Llama with a ChatML template and no BOS) so the tests can show
that nothing in servecheck is Gemma-specific, and the second built-in model, ``builtin-tools``: a
Qwen3 with a Hermes-style template that calls functions and thinks (``tool_corpus.py``), for the
tool, reasoning and stop-string checks.

    python -m servecheck.tinymodels.build --out servecheck/tinymodels/builtin     # rebuild
    python -m servecheck.tinymodels.build --arch qwen3-tools --out servecheck/tinymodels/builtin-tools
    python -m servecheck.tinymodels.build --arch llama-chatml --steps 60 --out /tmp/llama

Training is deterministic (seeded data order and init, deterministic kernels, fixed thread
count), so a rebuild on the same software gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from servecheck.tinymodels import corpus, tool_corpus

TEMPLATES = Path(__file__).parent / "templates"
TOOL_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>",
               "</tool_response>"]
"""Whole tokens of the tools model, not special (a server that skips special tokens keeps them,
as Qwen's tokenizers do, so its tool and reasoning parsers see them)."""

# The Gemma 3 instruction-tuned template (tokenizer_config.json of google/gemma-3-*-it), with its
# BOS, system-into-first-user-turn merge, ``model`` role and strict alternation.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class Recipe:
    arch: str = "gemma3"
    vocab_size: int = 2048
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 1
    head_dim: int = 32
    intermediate: int = 512
    sliding_window: int = 128
    steps: int = 900
    batch: int = 32
    lr: float = 3e-3
    seed: int = 0
    chats: int = 20000
    """Size of the training corpus (conversations)."""


def build_tokenizer(recipe: Recipe):
    """A byte-level BPE over the corpus, with the family's special tokens first (Gemma order)."""
    from transformers import PreTrainedTokenizerFast

    gemma = recipe.arch == "gemma3"
    tools = recipe.arch == "qwen3-tools"
    specials = (["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"] if gemma
                else ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=recipe.vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    text = (tool_corpus.tokenizer_text if tools else corpus.tokenizer_text)(recipe.seed)
    tok.train_from_iterator(text, trainer=trainer)
    if tools:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    if gemma:
        # Like Gemma's own tokenizer, a plain encode prepends <bos>: templated text must be
        # tokenized with add_special_tokens=False, or it gets two (the bug servecheck finds).
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)])
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                     pad_token="<pad>", unk_token="<unk>",
                                     additional_special_tokens=specials[4:])
        hf.chat_template = GEMMA3_TEMPLATE
    else:
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                     pad_token="<|endoftext|>",
                                     additional_special_tokens=["<|im_start|>"])
        hf.chat_template = ((TEMPLATES / "hermes_tools.jinja").read_text() if tools
                            else CHATML_TEMPLATE)
    hf.model_max_length = 1024
    return hf


def build_model(recipe: Recipe, tokenizer):
    torch.manual_seed(recipe.seed)
    vocab = len(tokenizer)
    if recipe.arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
        cfg = Gemma3TextConfig(
            vocab_size=vocab, hidden_size=recipe.hidden, intermediate_size=recipe.intermediate,
            num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads,
            num_key_value_heads=recipe.kv_heads, head_dim=recipe.head_dim,
            query_pre_attn_scalar=recipe.head_dim, max_position_embeddings=1024,
            sliding_window=recipe.sliding_window,
            # Gemma 3 interleaves sliding and full attention; with few layers the default
            # pattern (6) would make them all sliding, so end on a full layer explicitly.
            layer_types=["sliding_attention"] * (recipe.layers - 1) + ["full_attention"],
            bos_token_id=tokenizer.bos_token_id, eos_token_id=[tokenizer.eos_token_id, eot],
            pad_token_id=tokenizer.pad_token_id, dtype="float32")
        return Gemma3ForCausalLM(cfg)
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    chatml = dict(  # the ChatML families: no BOS, <|im_end|> ends a turn, tied embeddings
        vocab_size=vocab, hidden_size=recipe.hidden, intermediate_size=recipe.intermediate,
        num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.kv_heads, head_dim=recipe.head_dim,
        max_position_embeddings=1024, bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, dtype="float32")
    if recipe.arch == "qwen3-tools":
        return Qwen3ForCausalLM(Qwen3Config(**chatml))
    return LlamaForCausalLM(LlamaConfig(**chatml))


def encode_chat(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                thinking: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of a rendered chat and a 0/1 mask of the answer tokens (with their end marker).

    The whole chat is encoded at once and answers are located by character offsets, so the
    training tokens are exactly the ones a server produces for the same text. An answer is
    trained on only where the rendered chat continues its own generation prompt: a template
    that drops earlier turns' reasoning renders those turns differently from how they were made.
    """
    def render(turns: list[dict], prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(turns, tools=tools, tokenize=False,
                                             add_generation_prompt=prompt,
                                             enable_thinking=thinking)

    text = render(messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(messages[:i], prompt=True)
        end = len(render(messages[: i + 1]).rstrip("\n"))
        if text.startswith(prompt):
            spans.append((len(prompt), end))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s <= a < e for s, e in spans)) for a, _ in enc["offset_mapping"]]
    return enc["input_ids"], mask


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items) - size + 1, size)]


def train(recipe: Recipe, out: Path, log_every: int = 50) -> dict:
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer(recipe)
    model = build_model(recipe, tokenizer)
    if recipe.arch == "qwen3-tools":
        data = [encode_chat(tokenizer, *c) for c in tool_corpus.tool_corpus(recipe.chats,
                                                                           recipe.seed + 1)]
    else:
        data = [encode_chat(tokenizer, c) for c in corpus.corpus(recipe.chats, recipe.seed + 1)]
    order = random.Random(recipe.seed + 2)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, recipe.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return recipe.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, recipe.steps - warmup)
        return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    t0, loss_ema = time.time(), None
    # Tool chats run from 30 to 480 tokens: batches of like lengths pad less (3x faster). The
    # plain corpus keeps uniform batches, so the shipped builtin rebuilds to the same weights.
    buckets = ([] if recipe.arch != "qwen3-tools" else
               _chunks(sorted(data, key=lambda d: len(d[0])), recipe.batch))
    for step in range(recipe.steps):
        batch = (buckets[order.randrange(len(buckets))] if buckets else
                 [data[order.randrange(len(data))] for _ in range(recipe.batch)])
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (x, m) in enumerate(batch):
            ids[row, : len(x)] = torch.tensor(x)
            attn[row, : len(x)] = 1
            labels[row, : len(x)] = torch.where(torch.tensor(m) == 1, torch.tensor(x), -100)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if log_every and (step % log_every == 0 or step == recipe.steps - 1):
            print(f"step {step:4d}  loss {loss_ema:.3f}  {time.time() - t0:.0f}s", flush=True)
    model.eval()
    model.generation_config.do_sample = False
    for key in ("top_k", "top_p", "temperature"):
        setattr(model.generation_config, key, None)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {"recipe": asdict(recipe), "final_loss_ema": round(loss_ema or 0.0, 4),
            "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__}
    (out / "servecheck_build.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arch", choices=["gemma3", "llama-chatml", "qwen3-tools"], default="gemma3")
    p.add_argument("--steps", type=int, default=Recipe.steps)
    p.add_argument("--seed", type=int, default=Recipe.seed)
    p.add_argument("--small", action="store_true", help="a smaller net, for fast test fixtures")
    a = p.parse_args(argv)
    extra = dict(hidden=64, layers=2, intermediate=128, vocab_size=1024) if a.small else {}
    info = train(Recipe(arch=a.arch, steps=a.steps, seed=a.seed, **extra), a.out)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
