"""The ``servecheck`` command: argument parsing only; each command is a workflow.

Exit codes: 0 every check passed (or the command did its job), 1 a check failed, 2 bad input or
an error (one message naming the file and field, no traceback), 130 interrupted (what was
collected is on disk; run the same command again to resume).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from servecheck.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_PASS, InputError
from servecheck.reference.sampling import Convention


def cmd_generate(a: argparse.Namespace, console: Console) -> int:
    from servecheck.workflows.generate import run_generate

    return run_generate(a.prompts, a.target, a.out, console, reference=a.reference,
                        retries=a.retries, progress=not a.no_progress)


def cmd_check(a: argparse.Namespace, console: Console) -> int:
    from servecheck.checks.options import CheckOptions
    from servecheck.workflows.check import Outputs, run_check

    options = CheckOptions(
        reference=a.reference, numerics=a.numerics, logit_tolerance=a.logit_tolerance,
        alpha=a.alpha, convention=Convention(a.top_p_before_temperature, a.top_p_inclusive,
                                             a.penalty_scope),
        device=a.device, dtype=a.dtype)
    return run_check(a.responses, options, console, Outputs(a.json, a.report, a.junit),
                     progress=not a.no_progress)


def cmd_compare(a: argparse.Namespace, console: Console) -> int:
    from servecheck.workflows.compare import run_compare

    return run_compare(a.responses, a.reference, a.target, a.sample, a.seed, a.html, a.numerics,
                       console, progress=not a.no_progress)


def cmd_demo(a: argparse.Namespace, console: Console) -> int:
    from servecheck.workflows.demo import run_demo

    return run_demo(a.out_dir, console)


def cmd_serve(a: argparse.Namespace, console: Console) -> int:
    if a.server == "endpoint":
        from servecheck.servers.endpoint.server import serve

        console.print(f"serving {a.model} with the Inference Endpoints handler: POST "
                      f"http://{a.host}:{a.http_port}/ ; Ctrl-C stops")
        serve(a.model, a.host, a.http_port)
        return EXIT_PASS
    from servecheck.servers.triton_host import TritonHost

    host = TritonHost(a.model, a.host, a.http_port, a.grpc_port, a.metrics_port, a.seed_name,
                      a.add_special_tokens, a.decoupled, a.echo, a.fail_after, a.ignore_seed,
                      a.batch_variant)
    console.print(f"serving {a.model} on Triton: http://{a.host}:{a.http_port}, grpc "
                  f"{a.host}:{a.grpc_port}; models ensemble, tensorrt_llm_bls (TensorRT-LLM "
                  f"names), tensorrt_llm (llmapi names){', decoupled' if a.decoupled else ''}; "
                  f"Ctrl-C stops")
    host.serve_forever()
    return EXIT_PASS


def cmd_endpoint_files(a: argparse.Namespace, console: Console) -> int:
    from servecheck.servers.endpoint.server import write_files

    for path in write_files(a.model, a.out):
        console.print(f"written {path}")
    console.print(f"copy them into the endpoint repository of {a.model}, next to its weights")
    return EXIT_PASS


def cmd_probe(a: argparse.Namespace, console: Console) -> int:
    from servecheck.workflows.probe import ProbeOptions, run_probe

    options = ProbeOptions(a.reference, a.repeats, a.seeds, tuple(a.levels), a.max_tokens,
                           a.numerics, a.alpha)
    return run_probe(a.target, options, console, a.prompts, a.json)


def cmd_schema(a: argparse.Namespace, console: Console) -> int:
    from servecheck.formats.records import ResponseRecord, Variations

    model = ResponseRecord if a.which == "responses" else Variations
    print(json.dumps(model.model_json_schema(), indent=2))
    return EXIT_PASS


def port(text: str) -> int:
    """A TCP port: a whole number from 1 to 65535 (argparse turns a refusal into exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a whole number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is from 1 to 65535, got {value}")
    return value


def output_file(text: str) -> Path:
    """A file to write: not an existing directory (checked before any work starts, so a long
    run cannot fail at its last step)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; name a file to write")
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="servecheck", description=(
        "Check that the model behind an inference server is the model you think it is: "
        "chat template, termination and output distribution against a Hugging Face reference."))
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="expand a prompts file and collect responses")
    g.add_argument("prompts", type=Path, help="prompts.json: lists of variations")
    g.add_argument("--target", required=True,
                   help="where to send requests: hf:PATH|builtin (?fault=… for a known bug), "
                        "triton://HOST:PORT/MODEL, triton+grpc://HOST:PORT/MODEL, "
                        "openai://HOST:PORT[/v1], hf-endpoint://HOST:PORT")
    g.add_argument("--out", type=output_file, required=True,
                   help="responses file (.json or .jsonl)")
    g.add_argument("--reference", metavar="PATH|builtin",
                   help="the served model's checkpoint (local HF folder, or 'builtin' for the "
                        "built-in model), for targets that template on the client or restore "
                        "the end marker a server strips; a target's own ?template= wins. No "
                        "default: completions mode and Triton refuse to run without one, chat "
                        "mode records outputs as returned and says so")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--retries", type=int, default=3,
                   help="retries of a transient failure (refused, 429, 503), with backoff")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("check", help="check a responses file against a reference checkpoint")
    c.add_argument("responses", type=Path, help="responses file: JSON list or JSON Lines")
    c.add_argument("--reference", default="builtin", help="local HF checkpoint folder or 'builtin'")
    c.add_argument("--json", type=output_file, help="write the JSON summary here")
    c.add_argument("--report", type=output_file, help="write a self-contained HTML report here")
    c.add_argument("--junit", type=output_file, help="write JUnit XML here (one test case per check "
                                              "and parameter group), for CI")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.add_argument("--numerics", default="bf16", choices=["fp32", "fp16", "bf16", "fp8"],
                   help="the server's numerics; sets the greedy near-tie tolerance (default bf16)")
    c.add_argument("--logit-tolerance", type=float,
                   help="override the near-tie tolerance in logits (greedy and top_k boundary)")
    c.add_argument("--alpha", type=float, default=0.01,
                   help="family-wise false-alarm rate of the statistical checks (Holm)")
    c.add_argument("--device", help="where the reference scores: cpu, cuda, cuda:N, or auto / "
                                    "balanced (spread over the GPUs by accelerate); default cuda "
                                    "when there is one. Under torchrun each rank uses its own GPU")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the reference's weights and activations (default float32)")
    conv = c.add_argument_group("sampling convention (where engines differ; default: HF)")
    conv.add_argument("--top-p-before-temperature", action="store_true",
                      help="the nucleus is chosen on temperature-1 probabilities")
    conv.add_argument("--top-p-inclusive", action="store_true",
                      help="a token whose mass-above equals top_p exactly is kept")
    conv.add_argument("--penalty-scope", choices=["prompt+output", "output"],
                      default="prompt+output", help="which tokens penalties count")
    c.set_defaults(func=cmd_check)

    k = sub.add_parser("compare", help="replay a few served requests on a ground truth and show "
                                       "both outputs side by side, each with its verdict")
    k.add_argument("responses", type=Path, help="responses file: JSON list or JSON Lines")
    k.add_argument("--reference", default="builtin", help="local HF checkpoint folder or 'builtin'")
    k.add_argument("--target", help="the ground truth (default: hf:<reference>, in process)")
    k.add_argument("--sample", type=int, default=5, help="how many records (default 5)")
    k.add_argument("--seed", type=int, default=0, help="seed of the random pick (default 0)")
    k.add_argument("--html", type=output_file, help="write the side-by-side HTML page here")
    k.add_argument("--numerics", default="bf16", choices=["fp32", "fp16", "bf16", "fp8"],
                   help="the server's numerics; sets the tolerances (default bf16)")
    k.add_argument("--no-progress", action="store_true", help="no progress bars")
    k.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", help="a correct and a faulty server on the built-in model, checked")
    d.add_argument("--out-dir", type=Path, default=Path("demo-out"))
    d.set_defaults(func=cmd_demo)

    v = sub.add_parser("serve", help="serve a checkpoint on a real inference server")
    v.add_argument("server", choices=["triton", "endpoint"],
                   help="triton: a real Triton server, TensorRT-LLM interface; endpoint: the HF "
                        "Inference Endpoints handler behind a local HTTP server")
    v.add_argument("--model", default="builtin", help="local HF checkpoint folder or 'builtin'")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--http-port", type=port, default=8000)
    v.add_argument("--grpc-port", type=port, default=8001)
    v.add_argument("--metrics-port", type=port, default=8002)
    v.add_argument("--seed-name", choices=["seed", "random_seed"], default="seed",
                   help="the seed input's name (random_seed before TensorRT-LLM's 2025 rename)")
    v.add_argument("--add-special-tokens", action="store_true",
                   help="tokenize text_input with special tokens added (double BOS on Gemma)")
    v.add_argument("--decoupled", action="store_true",
                   help="decoupled models: one response per token (generate_stream, gRPC stream)")
    v.add_argument("--echo", action="store_true",
                   help="a fault: return the prompt even when exclude_input_in_output is set")
    v.add_argument("--fail-after", type=int, metavar="N",
                   help="a fault: raise after N tokens (an error frame inside a stream)")
    v.add_argument("--ignore-seed", action="store_true", help="a fault: every request gets seed 0")
    v.add_argument("--batch-variant", action="store_true",
                   help="a fault: greedy output changes when requests share a batch")
    v.set_defaults(func=cmd_serve)

    pr = sub.add_parser("probe", help="determinism and seed probes against a live server")
    pr.add_argument("prompts", type=Path, nargs="?", help="prompts file (default: built-in prompts)")
    pr.add_argument("--target", required=True, help="the server, as for generate")
    pr.add_argument("--reference", default="builtin", help="local HF checkpoint folder or 'builtin'")
    pr.add_argument("--repeats", type=int, default=4, help="copies of the repeated request")
    pr.add_argument("--seeds", type=int, default=8, help="seeds per prompt in the seed probe")
    pr.add_argument("--levels", type=int, nargs="+", default=[4, 8],
                    help="concurrency levels of the batch-invariance probe")
    pr.add_argument("--max-tokens", type=int, default=32)
    pr.add_argument("--numerics", default="bf16", choices=["fp32", "fp16", "bf16", "fp8"])
    pr.add_argument("--alpha", type=float, default=0.01)
    pr.add_argument("--json", type=output_file, help="write the results here")
    pr.set_defaults(func=cmd_probe)

    e = sub.add_parser("endpoint-files",
                       help="write handler.py and requirements.txt for an HF Inference Endpoint")
    e.add_argument("--model", default="builtin", help="the checkpoint the endpoint will serve")
    e.add_argument("--out", type=Path, required=True, help="folder to write them to")
    e.set_defaults(func=cmd_endpoint_files)

    s = sub.add_parser("schema", help="print the JSON Schema of a file format")
    s.add_argument("which", choices=["responses", "prompts"])
    s.set_defaults(func=cmd_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    try:
        return args.func(args, console)
    except InputError as e:
        print(f"servecheck: error: {e}", file=sys.stderr)  # one unwrapped line, for grep and CI
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("servecheck: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
