"""Credential masking for database URLs (stdlib only). Every message, log line and report that may
contain a URL goes through ``mask_url`` or ``scrub``."""

from __future__ import annotations

import re

# scheme://user:password@host -> scheme://user:***@host
_URL_PW = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<at>@)")
# libpq keyword form: password=secret
_KW_PW = re.compile(r"(?i)(password\s*=\s*)('[^']*'|\S+)")


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    return scrub(str(url))


def scrub(text: str) -> str:
    """Mask every URL password (and ``password=...``) inside arbitrary text."""
    text = _URL_PW.sub(lambda m: m.group("pre") + "***" + m.group("at"), text)
    return _KW_PW.sub(lambda m: m.group(1) + "***", text)
