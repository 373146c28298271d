"""The headless Chromium the browser tests of the HTML report drive, where there is one."""

from __future__ import annotations

import shutil

import pytest

BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(n)), None)
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="chromium is not installed: .ci/run installs Debian's chromium "
                            "(apt-get install chromium, as root); without it the browser tests "
                            "cannot run")
