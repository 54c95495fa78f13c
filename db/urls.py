"""The one redaction of the project: a URL as a message may show it, and a message cleaned of the
secrets of the URLs it was about. The standard library only, so the runtime inside a model server
uses it too.

Read from the text, never parsed: a password that holds an unencoded '@' (tuner:p@ss@host) is split
by URL parsers at the first '@', which then hand its tail to the driver as a host name, and the
driver's error shows it (`failed to resolve host 'ss@host'`).
"""
from __future__ import annotations

import re

# query parameters that carry a secret (libpq's password=, a token=, ...): their values are hidden too
_SECRET_PARAM = re.compile(r"([?&](?:password|passwd|pwd|token|secret|api_key|apikey)=)([^&#]*)", re.IGNORECASE)
_PIECE = re.compile(r"[@:/?#&=]")
_SHORTEST_PIECE = 3  # pieces shorter than this are too common in messages to hide, and give little away


def _split(url: str) -> tuple[str, str, str, str] | None:
    """(scheme, user, password, rest after the last '@' of the authority), or None without credentials."""
    scheme, sep, rest = url.partition("://")
    first = rest.find("@")
    if not sep or first < 0:
        return None
    slash = rest.find("/", first)
    at = rest.rfind("@", 0, slash if slash >= 0 else len(rest))  # the host follows the last '@'
    user, colon, password = rest[:at].partition(":")
    return scheme, user, password if colon else "", rest[at + 1:]


def redact(url: object) -> str:
    """The URL with its whole password, and the values of its secret query parameters, as ***."""
    text = str(url)
    parts = _split(text)
    if parts is not None:
        scheme, user, password, rest = parts
        text = f"{scheme}://{user}{':***' if password else ''}@{rest}"
    return _SECRET_PARAM.sub(r"\1***", text)


def secrets(url: object) -> list[str]:
    """What of a URL must never be shown: its password and secret parameters, and every piece of
    them a parser may have cut off and shown elsewhere; longest first."""
    text = str(url)
    parts = _split(text)
    whole = [parts[2]] if parts is not None and parts[2] else []
    whole += [m.group(2) for m in _SECRET_PARAM.finditer(text) if m.group(2)]
    pieces = {p for w in whole for p in _PIECE.split(w) if len(p) >= _SHORTEST_PIECE}
    return sorted(set(whole) | pieces, key=len, reverse=True)


def scrub(message: object, *urls: object) -> str:
    """A message (a driver's error, say) with each URL redacted and its secrets replaced by ***."""
    text = str(message)
    for url in urls:
        if url:
            text = text.replace(str(url), redact(url))
            for secret in secrets(url):
                text = text.replace(secret, "***")
    return text
