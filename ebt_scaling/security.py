"""Credential masking for database URLs (stdlib only). Every message, log line and report that may
contain a URL goes through ``mask_url`` or ``scrub``.

Passwords are not always well-formed: users paste them with spaces, ``:`` or an unencoded ``@``. So the
password of ``scheme://user:password@host`` runs from the first ``:`` after the user to the *last* ``@``
before the next URL or the end of the line (a host never contains ``@``). When in doubt this masks too
much, never too little.
"""

from __future__ import annotations

import re

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_USER = re.compile(r"[^:/@\s]*")
# libpq keyword form: password=secret or password='se cret'
_KW_PW = re.compile(r"(?i)(password\s*=\s*)('[^']*'|[^\s)\]},;]+)")
MASK = "***"


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    return scrub(str(url))


def _mask_userinfo_passwords(text: str) -> str:
    out: list[str] = []
    pos = 0
    urls = list(_SCHEME.finditer(text))
    for i, m in enumerate(urls):
        start = m.end()
        if start < pos:
            continue
        newline = text.find("\n", start)
        end = min(len(text) if newline < 0 else newline, urls[i + 1].start() if i + 1 < len(urls) else len(text))
        colon = _USER.match(text, start, end).end()  # type: ignore[union-attr] # matches the empty string too
        at = text.rfind("@", colon, end)
        if colon < end and text[colon] == ":" and at > colon:
            out.append(text[pos:colon + 1] + MASK)
            pos = at
    out.append(text[pos:])
    return "".join(out)


def scrub(text: str) -> str:
    """Mask every URL password (and ``password=...``) inside arbitrary text."""
    return _KW_PW.sub(lambda m: m.group(1) + MASK, _mask_userinfo_passwords(str(text)))
