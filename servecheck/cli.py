"""The ``servecheck`` command: argument parsing only; each command is a workflow.

Exit codes: ``servecheck.errors`` lists them (and every ``--help`` shows ``EXIT_CODES``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from servecheck.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_PASS, InputError
from servecheck.formats.limits import MAX_REQUESTS
from servecheck.reference.sandbox import DEFAULT_LIMITS, TemplateLimits, template_limits
from servecheck.report.terminal import visible
from servecheck.workflows.arguments import (
    COUNT,
    PROBABILITY,
    REFERENCE_HELP,
    add_template_limits,
    bounded,
    fault_sizes,
    output_file,
    port,
)
from servecheck.workflows.long_prompts import add_arguments as add_long_prompts_arguments
from servecheck.workflows.plan import add_arguments as add_plan_arguments

if TYPE_CHECKING:  # rich and torch load inside main: --help stays instant, and a Ctrl-C
    from rich.console import Console  # while they load is caught like any other


def cmd_generate(a: argparse.Namespace, console: Console) -> int:
    from servecheck.workflows.generate import run_generate

    return run_generate(a.prompts, a.target, a.out, console, reference=a.reference,
                        retries=a.retries, progress=not a.no_progress,
                        max_requests=a.max_requests)


def cmd_check(a: argparse.Namespace, console: Console) -> int:
    from servecheck.checks.core.options import CheckOptions, given_convention
    from servecheck.workflows.check import Outputs
    from servecheck.workflows.check_command import run_check
    from servecheck.workflows.chunked import Chunking

    options = CheckOptions(
        reference=a.reference, numerics=a.numerics, logit_tolerance=a.logit_tolerance,
        alpha=a.alpha, device=a.device, dtype=a.dtype, dask=a.dask, convention=given_convention(
            a.sampler_order, a.top_p_before_temperature, a.top_p_inclusive, a.penalty_scope),
        detect=a.detect)
    return run_check(a.responses, options, console, Outputs(a.json, a.report, a.junit),
                     progress=not a.no_progress, max_record_bytes=int(a.max_record_mb * 2**20),
                     inconclusive_ok=a.inconclusive_ok,
                     chunking=Chunking(a.records_per_chunk, a.tokens_per_chunk, a.state,
                                       not a.fresh))


def cmd_compare(a: argparse.Namespace, console: Console) -> int:
    from servecheck.workflows.compare import run_compare

    return run_compare(a.responses, a.reference, a.target, 5 if a.sample is None else a.sample,
                       a.seed, a.html, a.numerics, console, progress=not a.no_progress,
                       max_record_bytes=int(a.max_record_mb * 2**20), ids=a.ids)


def cmd_demo(a: argparse.Namespace, console: Console) -> int:
    from servecheck.workflows.demo import run_demo

    return run_demo(a.out_dir, console)


def cmd_serve_endpoint(a: argparse.Namespace, console: Console) -> int:
    from servecheck.reference.model import Reference
    from servecheck.servers.endpoint.server import serve
    from servecheck.servers.supervise import check_ports

    check_ports(a.host, {"--http-port": a.http_port})  # one line now, not a traceback later
    Reference(a.model)  # the checkpoint opens and its template renders, before serving

    console.print(f"serving {a.model} with the Inference Endpoints handler: POST "
                  f"http://{a.host}:{a.http_port}/ ; Ctrl-C stops")
    serve(a.model, a.host, a.http_port)
    return EXIT_PASS


def cmd_serve_triton(a: argparse.Namespace, console: Console) -> int:
    # the ports first (a clash is one line, at once), then the server in a supervised child so
    # that no tritonserver or backend stub outlives this command, even after kill -9
    from servecheck.servers.supervise import check_ports, run_supervised

    check_ports(a.host, {"--http-port": a.http_port, "--grpc-port": a.grpc_port,
                         "--metrics-port": a.metrics_port})
    console.print(f"starting {a.model} on Triton: http://{a.host}:{a.http_port}, grpc "
                  f"{a.host}:{a.grpc_port}; models ensemble, tensorrt_llm_bls (TensorRT-LLM "
                  f"names), tensorrt_llm (llmapi names){', decoupled' if a.decoupled else ''}; "
                  f"Ctrl-C stops")
    code = run_supervised("servecheck.servers.triton_host:serve_child", dict(
        model=a.model, host=a.host, http_port=a.http_port, grpc_port=a.grpc_port,
        metrics_port=a.metrics_port, seed_name=a.seed_name,
        add_special_tokens=a.add_special_tokens, decoupled=a.decoupled, echo=a.echo,
        fail_after=a.fail_after, ignore_seed=a.ignore_seed, batch_variant=a.batch_variant),
        leftovers="servecheck.servers.triton_host:remove_leftovers")
    if code == EXIT_INTERRUPTED:
        print("servecheck: interrupted", file=sys.stderr)
    return code


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
    from servecheck.formats.prompts import Variations
    from servecheck.formats.records import ResponseRecord

    model = ResponseRecord if a.which == "responses" else Variations
    print(json.dumps(model.model_json_schema(), indent=2))
    return EXIT_PASS


def cmd_list(a: argparse.Namespace, console: Console) -> int:
    from servecheck.workflows.listing import run_list

    return run_list(console, a.json)


EXIT_CODES = """exit codes:
  0    every check passed (or the command did its job)
  1    a check failed (generate: a request failed; a rerun retries it)
  2    bad input or an error: one line naming the file, record and field
  3    inconclusive: a check had too few records to decide (check --inconclusive-ok: 0)
  130  interrupted: what was collected is kept; run the same command again to resume
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none to show (a flag, an unset option)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    p = Subparser(prog="servecheck", description=(
        "Check that the model behind an inference server is the model you think it is: "
        "chat template, termination and output distribution against a Hugging Face reference."))
    sub = p.add_subparsers(dest="command", required=True, parser_class=Subparser)

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
    g.add_argument("--retries", type=bounded(int, 0), default=3,
                   help="retries of a transient failure (see the README's list), with backoff")
    g.add_argument("--max-requests", type=COUNT, default=MAX_REQUESTS, metavar="N",
                   help="refuse a prompts file whose matrix expands to more requests than this "
                        "(counted before expanding)")
    add_template_limits(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("check", help="check a responses file against a reference checkpoint")
    c.add_argument("responses", type=Path, help="responses: a JSON list or JSON Lines file, or a "
                   "directory or quoted glob of shards (.jsonl[.gz], .json, .parquet)")
    c.add_argument("--reference", required=True, metavar="PATH|builtin", help=REFERENCE_HELP)
    c.add_argument("--json", type=output_file, help="write the JSON summary here")
    c.add_argument("--report", type=output_file, help="write a self-contained HTML report here")
    c.add_argument("--junit", type=output_file, help="write JUnit XML here (one test case per check "
                                              "and parameter group), for CI")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")
    c.add_argument("--numerics", default="bf16", choices=["fp32", "fp16", "bf16", "fp8"],
                   help="the server's numerics, which set the tolerances of the deterministic "
                        "checks (greedy near-ties 0.25 logits, served log-probs 0.1 at bf16; "
                        "0.01 each at fp32). bf16 is what GPU servers run; the demo checks an "
                        "fp32 in-process server, so it says --numerics fp32")
    c.add_argument("--detect", type=fault_sizes, default=(), metavar="FAULT=SIZE,…",
                   help="fault sizes this run must be able to catch, e.g. temperature=0.1,"
                        "top_k=40,min_p=0.05,presence_penalty=0.3: a statistical check that "
                        "passes but could not have is INCONCLUSIVE (exit 3) and says how many "
                        "requests of this mix would")
    c.add_argument("--logit-tolerance", type=bounded(float, 0),
                   help="override the near-tie tolerance in logits (greedy and top_k boundary)")
    c.add_argument("--alpha", type=PROBABILITY, default=0.01,
                   help="the run's false-alarm rate over all statistical checks (each gets "
                        "a fixed share, Holm within)")
    c.add_argument("--device", help="where the reference scores: cpu, cuda, cuda:N, or auto / "
                                    "balanced (spread over the GPUs by accelerate); default cuda "
                                    "when there is one. Under torchrun each rank uses its own GPU")
    c.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the reference's weights and activations")
    c.add_argument("--dask", metavar="ADDRESS|local[:N]|local-gpu[:N]", help="score on a Dask "
                   "cluster: its scheduler's address, local:N CPU worker processes, or local-gpu "
                   "(one worker per GPU) (default: no cluster)")
    c.add_argument("--max-record-mb", type=bounded(float, 0, open_low=True), default=16,
                   help="refuse a record larger than this (memory stays bounded)")
    c.add_argument("--inconclusive-ok", action="store_true",
                   help="exit 0, not 3, when a check had too few records to decide")
    c.add_argument("--records-per-chunk", type=COUNT, default=20_000,
                   help="a larger set is checked in chunks of this many records (memory stays "
                        "bounded): fit, temperature, sampler, mask, context, cache, log-probs "
                        "and seeds pool their evidence over the chunks and are decided once "
                        "(the tests at α), the other "
                        "checks run on each chunk at α/chunks; saved chunk by chunk so that a "
                        "rerun resumes")
    c.add_argument("--tokens-per-chunk", type=COUNT, default=2_000_000,
                   help="and at most this many tokens per chunk (long records: fewer per chunk)")
    c.add_argument("--state", type=Path, help="where a chunked run saves each chunk's verdicts "
                   "(default: under $SERVECHECK_STATE or ~/.cache/servecheck/check-state)")
    c.add_argument("--fresh", action="store_true",
                   help="check every chunk again rather than resume from saved verdicts")
    add_template_limits(c)
    conv = c.add_argument_group("sampling convention (where engines differ; unset: found from "
                                "the records, see the README's table)")
    conv.add_argument("--sampler-order", choices=["find", "hf", "llama.cpp"], default="find",
                      help="hf: temperature, then top_k/top_p/min_p (transformers, vLLM, SGLang, "
                           "TGI, TensorRT-LLM); llama.cpp: top_k/top_p/min_p on T=1 "
                           "probabilities, then temperature; find (default): the one the "
                           "records fit")
    conv.add_argument("--top-p-before-temperature", action="store_true",
                      help="the nucleus is chosen on temperature-1 probabilities")
    conv.add_argument("--top-p-inclusive", action="store_true",
                      help="a token whose mass-above equals top_p exactly is kept")
    conv.add_argument("--penalty-scope", choices=["prompt+output", "output"],
                      help="which tokens penalties count (default: found; prompt+output where "
                           "the records cannot tell)")
    c.set_defaults(func=cmd_check)

    k = sub.add_parser("compare", help="replay a few served requests on a ground truth and show "
                                       "both outputs side by side, each with its verdict")
    k.add_argument("responses", type=Path, help="responses file: JSON list or JSON Lines")
    k.add_argument("--reference", required=True, metavar="PATH|builtin", help=REFERENCE_HELP)
    k.add_argument("--target", help="the ground truth (default: hf:<reference>, in process)")
    pick = k.add_mutually_exclusive_group()
    pick.add_argument("--sample", type=COUNT, metavar="N",
                      help="how many records, picked at random (default: 5)")
    pick.add_argument("--ids", metavar="ID[,ID…]|@FILE",
                      help="replay exactly these records instead of a random sample: ids "
                           "separated by commas ('#N', quoted in a shell, for the N-th record, "
                           "from 0, where a record has no id), or @FILE: the records named in "
                           "the findings of the failing checks of a `servecheck check --json` "
                           "summary, or a text file of ids, one per line (for ids holding a "
                           "comma). An id that names no record is bad input")
    k.add_argument("--seed", type=bounded(int, 0), default=0,
                   help="seed of the random pick (--sample)")
    k.add_argument("--html", type=output_file, help="write the side-by-side HTML page here")
    k.add_argument("--numerics", default="bf16", choices=["fp32", "fp16", "bf16", "fp8"],
                   help="the server's numerics; sets the tolerances")
    k.add_argument("--max-record-mb", type=bounded(float, 0, open_low=True), default=16,
                   help="refuse a record larger than this (memory stays bounded)")
    k.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_template_limits(k)
    k.set_defaults(func=cmd_compare)

    d = sub.add_parser("demo", help="a correct and a faulty server on the built-in model, checked")
    d.add_argument("--out-dir", type=Path, default=Path("demo-out"),
                   help="where the demo writes its prompts, responses and reports")
    d.set_defaults(func=cmd_demo)

    v = sub.add_parser("serve", help="serve a checkpoint on a real inference server")
    servers = v.add_subparsers(dest="server", required=True, metavar="{triton,endpoint}")
    t = servers.add_parser("triton", help="a real Triton server with the TensorRT-LLM interface "
                                          "(ensemble, tensorrt_llm_bls, tensorrt_llm)")
    t.add_argument("--model", default="builtin", help="local HF checkpoint folder or 'builtin'")
    t.add_argument("--host", default="127.0.0.1", help="address to bind")
    t.add_argument("--http-port", type=port, default=8000, help="HTTP/REST port")
    t.add_argument("--grpc-port", type=port, default=8001, help="gRPC port")
    t.add_argument("--metrics-port", type=port, default=8002,
                   help="Prometheus metrics port (when taken, servecheck says so before start)")
    t.add_argument("--seed-name", choices=["seed", "random_seed"], default="seed",
                   help="the seed input's name (random_seed before TensorRT-LLM's 2025 rename)")
    t.add_argument("--add-special-tokens", action="store_true",
                   help="tokenize text_input with special tokens added (double BOS on Gemma)")
    t.add_argument("--decoupled", action="store_true",
                   help="decoupled models: one response per token (generate_stream, gRPC stream)")
    t.add_argument("--echo", action="store_true",
                   help="a fault: return the prompt even when exclude_input_in_output is set")
    t.add_argument("--fail-after", type=int, metavar="N",
                   help="a fault: raise after N tokens (an error frame inside a stream)")
    t.add_argument("--ignore-seed", action="store_true", help="a fault: every request gets seed 0")
    t.add_argument("--batch-variant", action="store_true",
                   help="a fault: greedy output changes when requests share a batch")
    t.set_defaults(func=cmd_serve_triton)
    n = servers.add_parser("endpoint", help="the HF Inference Endpoints handler behind a local "
                                            "HTTP server (POST / with inputs and parameters)")
    n.add_argument("--model", default="builtin", help="local HF checkpoint folder or 'builtin'")
    n.add_argument("--host", default="127.0.0.1", help="address to bind")
    n.add_argument("--http-port", type=port, default=8080, help="HTTP port")
    n.set_defaults(func=cmd_serve_endpoint)

    pr = sub.add_parser("probe", help="determinism and seed probes against a live server")
    pr.add_argument("prompts", type=Path, nargs="?", help="prompts file (default: built-in prompts)")
    pr.add_argument("--target", required=True, help="the server, as for generate")
    pr.add_argument("--reference", required=True, metavar="PATH|builtin", help=REFERENCE_HELP)
    pr.add_argument("--repeats", type=bounded(int, 2), default=4,
                    help="copies of the repeated request")
    pr.add_argument("--seeds", type=bounded(int, 2), default=8,
                    help="seeds per prompt in the seed probe")
    pr.add_argument("--levels", type=bounded(int, 2), nargs="+", default=[4, 8],
                    help="concurrency levels of the batch-invariance probe (default: 4 8)")
    pr.add_argument("--max-tokens", type=COUNT, default=32, help="tokens per probe request")
    pr.add_argument("--numerics", default="bf16", choices=["fp32", "fp16", "bf16", "fp8"],
                    help="the server's numerics; sets the tolerances")
    pr.add_argument("--alpha", type=PROBABILITY, default=0.01,
                    help="family-wise false-alarm rate of the probes")
    pr.add_argument("--json", type=output_file, help="write the results here")
    pr.set_defaults(func=cmd_probe)
    add_plan_arguments(sub)
    add_long_prompts_arguments(sub)

    e = sub.add_parser("endpoint-files",
                       help="write handler.py and requirements.txt for an HF Inference Endpoint")
    e.add_argument("--model", required=True, metavar="PATH|builtin",
                   help="the checkpoint the endpoint will serve ('builtin' for the built-in "
                        "model: a choice you make, never a default, as for check)")
    e.add_argument("--out", type=Path, required=True, help="folder to write them to")
    e.set_defaults(func=cmd_endpoint_files)

    s = sub.add_parser("schema", help="print the JSON Schema of a file format")
    s.add_argument("which", choices=["responses", "prompts"], help="which file format")
    s.set_defaults(func=cmd_schema)

    ls = sub.add_parser("list", help="the targets and checks installed (built-in and added by "
                                     "packages through entry points)")
    ls.add_argument("--json", action="store_true", help="print them as JSON")
    ls.set_defaults(func=cmd_list)
    return p


class Subparser(argparse.ArgumentParser):
    """Every subcommand shows its defaults and the exit codes, and a refused argument is one
    line (``servecheck check: error: argument --alpha: …``), as every other bad input is."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INPUT, visible(f"{self.prog}: error: {message} (see {self.prog} --help)")
                  + "\n")

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("epilog", EXIT_CODES)
        super().__init__(*args, **kwargs)


class StderrLines(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (a test's capture, a redirected run)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(visible(f"servecheck: {record.levelname.lower()}: {record.getMessage()}"),
              file=sys.stderr)


def warnings_to_stderr() -> None:
    """servecheck's warnings (a torn last line, …) as one ``servecheck: warning:`` line each."""
    log = logging.getLogger("servecheck")
    if not any(isinstance(h, StderrLines) for h in log.handlers):
        log.addHandler(StderrLines())
        log.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    warnings_to_stderr()
    try:
        from rich.console import Console

        with template_limits(TemplateLimits(
                getattr(args, "template_timeout", DEFAULT_LIMITS.timeout_s),
                int(getattr(args, "template_max_mb", DEFAULT_LIMITS.max_chars / 2**20) * 2**20))):
            return args.func(args, Console(highlight=False, soft_wrap=True))
    except InputError as e:  # one unwrapped line, for grep and CI
        print(visible(f"servecheck: error: {e}"), file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("servecheck: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if not _caused_by_ctrl_c(e):
            raise
        print("servecheck: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _caused_by_ctrl_c(e: BaseException) -> bool:
    """A Ctrl-C that lands inside a library's import (torch's, transformers') can come out as
    that library's own error, with the KeyboardInterrupt as its cause: still a Ctrl-C."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
