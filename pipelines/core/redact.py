"""Secrets out of logs and messages: URLs with their passwords masked.

``RECLOOP_REDIS_URL`` (and any other URL recloop names in a log line, an error or the console)
may carry a password (``redis://:pw@host:6379/0``, ``redis://user:pw@host/0``) or one in its
query (``?password=pw``). :func:`redact_url` masks it as ``***``, keeping what helps an operator
(scheme, user, host, port, database); :func:`redact_text` does the same for every URL inside a
free text (an exception's message from a client library). Only what is shown is redacted: the
URL itself is passed unchanged to the clients that connect with it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_KEYS = frozenset({"password", "pass", "pwd", "secret", "token", "access_token"})
"""Query parameters masked by :func:`redact_url` (compared lowercased)."""

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):[^@/\s]*@")
_SECRET_NAMES = "|".join(sorted(SECRET_KEYS))
_QUERY_SECRET = re.compile(rf"(?P<key>[?&;](?:{_SECRET_NAMES})=)[^&\s]*", re.I)


def redact_url(url: str) -> str:
    """``url`` with the password of its user info and the values of secret query parameters
    (:data:`SECRET_KEYS`) replaced by ``***``; a URL without them is returned unchanged.
    Never raises: text that does not parse as a URL goes through :func:`redact_text`."""
    try:
        parts = urlsplit(str(url))
        netloc = parts.netloc
        if parts.password is not None or "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{MASK}@{hostport}" if ":" in userinfo else f"{MASK}@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(k.lower() in SECRET_KEYS for k, _ in pairs):
                masked = [(k, MASK if k.lower() in SECRET_KEYS else v) for k, v in pairs]
                query = urlencode(masked, safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return redact_text(str(url))


def redact_text(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` and the value of every
    secret query parameter (``?password=...``) replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", str(text))
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", text)
