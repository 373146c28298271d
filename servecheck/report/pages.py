"""HTML pages: the ``check --report`` report and the ``compare --html`` side-by-side page.

One Jinja environment for both: sandboxed (a template cannot reach Python internals), with
autoescaping on for every template and ``StrictUndefined`` (a typo in a template fails loudly
instead of printing nothing). Model text is untrusted: it only ever reaches a page through
autoescaped expressions, never ``|safe``; the only markup marked safe is the SVG built by
``svg.py`` and a page's records part (``templates/_outputs.html.j2``), itself rendered here,
escaped, and laid into the page whole (a chunked run keeps it with a chunk's verdicts, in a
state directory of the user's own). Each page also carries a Content-Security-Policy that
lets run only its own inline script (by nonce), so even an escaping mistake could not run
injected code.
"""

from __future__ import annotations

import secrets
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import PackageLoader, StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from servecheck.report.files import write_text


@cache
def environment() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        loader=PackageLoader("servecheck.report", "templates"), autoescape=True,
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render(template: str, **view: Any) -> str:
    """Render a page; adds the script nonce of its Content-Security-Policy."""
    return environment().get_template(template).render(nonce=secrets.token_urlsafe(16), **view)


def write_page(path: Path, html: str) -> None:
    """The page whole or not at all (``files.write_text``)."""
    write_text(path, html)
