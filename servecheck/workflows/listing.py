"""``servecheck list``: the targets and the checks this installation knows, built-in and added
by installed packages through the entry-point groups ``servecheck.targets`` and
``servecheck.checks``. What a team registered from its own package shows here, with where it
came from, before it shows in a run.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from servecheck.checks.core.registry import alpha_share, specs
from servecheck.collect.targets import registered_targets
from servecheck.errors import EXIT_PASS
from servecheck.report.terminal import markup

__all__ = ["listing", "run_list"]


def listing() -> dict[str, list[dict[str, Any]]]:
    """Every target scheme and every check, as ``--json`` writes them."""
    targets = [{"scheme": t.scheme, "source": t.source, "class": t.value, "summary": t.summary}
               for t in registered_targets().values()]
    checks = [{"name": ", ".join(s.names), "order": s.order, "kind": s.kind,
               "alpha_share": round(alpha_share(s.name), 6) if s.alpha_share else 0.0,
               "screens": s.screens, "module": s.module, "source": s.source,
               "summary": s.description}
              for s in specs()]
    return {"targets": targets, "checks": checks}


def run_list(console: Console, as_json: bool = False) -> int:
    found = listing()
    if as_json:
        print(json.dumps(found, indent=1, ensure_ascii=False))
        return EXIT_PASS
    targets = Table(title="targets (--target SCHEME:…)", title_justify="left")
    for column in ("scheme", "source", "what it reaches"):
        targets.add_column(column)
    for t in found["targets"]:
        targets.add_row(markup(t["scheme"]), markup(t["source"]), markup(t["summary"]))
    checks = Table(title="checks (in table order)", title_justify="left")
    for column in ("check", "kind", "share of α", "source", "what it checks"):
        checks.add_column(column)
    for c in found["checks"]:
        share = f"{c['alpha_share']:.2f}" if c["alpha_share"] else "—"
        kind = c["kind"] + (", screens" if c["screens"] else "")
        checks.add_row(markup(c["name"]), kind, share, markup(c["source"]), markup(c["summary"]))
    console.print(targets)
    console.print(checks)
    return EXIT_PASS
