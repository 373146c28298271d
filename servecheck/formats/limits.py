"""Default bounds on what one input may ask of servecheck, each raised by a flag; here, with no
imports, so that the command line can show them without loading the readers."""

from __future__ import annotations

MAX_REQUESTS = 1_000_000
"""Requests one prompts file may expand to (``generate --max-requests``): at about 1 KiB a
request, a matrix past this holds gigabytes before the first request is sent."""
