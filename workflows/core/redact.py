"""Credentials embedded in URIs, hidden in everything mien writes or prints.

A URI a user gives may carry a secret: ``https://user:password@mlflow.example.com``, a token as
the whole userinfo (``https://ghp_xxx@host``), a presigned URL (``?X-Amz-Signature=...``, an
Azure SAS ``sig=``). :func:`redact` masks them in any text or config tree; it is applied where
mien writes or prints (the run JSON, MLflow params / tags / artifacts through ``Tracker``, the
HTML report, the CLI's messages and, through :class:`RedactingFilter`, every log record the
CLI's handlers emit). The values used to connect are never redacted, only what is shown.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")
MASK = "***"
# Query parameters that hold a credential (presigned S3 / GCS URLs, Azure SAS, API tokens); case-insensitive.
SECRET_QUERY_PARAMS = (
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature", "x-goog-credential",
    "sig", "signature", "token", "access_token", "refresh_token", "id_token", "api_key", "apikey",
    "access_key", "secret", "secret_key", "client_secret", "password", "passwd", "pwd",
)
# A bare userinfo (no ':') in these schemes is a token, not a user name (``https://TOKEN@github.com``).
TOKEN_USERINFO_SCHEMES = ("http", "https", "ws", "wss")

# scheme://USERINFO@ : the userinfo runs to the last '@' before the authority ends (a raw '@' in a
# password that should have been percent-encoded still counts as part of it).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<userinfo>[^\s/?#\"<>\\`]*)@")
_SECRET_NAMES = "|".join(re.escape(p) for p in SECRET_QUERY_PARAMS)
_QUERY = re.compile(rf"(?P<lead>[?&;](?:{_SECRET_NAMES})=)[^&#\s\"'<>]*", re.IGNORECASE)


def _mask_userinfo(m: re.Match[str]) -> str:
    scheme, userinfo = m.group("scheme"), m.group("userinfo")
    if ":" in userinfo:
        return f"{scheme}://{userinfo.split(':', 1)[0]}:{MASK}@"
    if userinfo and scheme.lower().rsplit("+", 1)[-1] in TOKEN_USERINFO_SCHEMES:
        return f"{scheme}://{MASK}@"
    return m.group(0)


def redact(value: T) -> T:
    """``value`` with URI credentials masked: ``scheme://user:password@host`` → ``scheme://user:***@host``,
    ``https://token@host`` → ``https://***@host``, ``?X-Amz-Signature=...`` → ``?X-Amz-Signature=***``.
    Strings are redacted; mappings (keys and values), lists and tuples recursively; anything else
    is returned as it is. Idempotent."""
    if isinstance(value, str):
        if "@" not in value and "=" not in value:  # nothing to mask: the common case, kept cheap
            return value
        return _QUERY.sub(r"\g<lead>" + MASK, _USERINFO.sub(_mask_userinfo, value))  # type: ignore[return-value]
    if isinstance(value, Mapping):
        return {redact(k): redact(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list):
        return [redact(v) for v in value]  # type: ignore[return-value]
    if isinstance(value, tuple):
        return tuple(redact(v) for v in value)  # type: ignore[return-value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts a record's message and traceback before a handler emits it, so a log call that
    formats a URI (or an exception quoting one, e.g. MLflow's "API request to https://user:pw@...
    failed") shows no credential, without every call site having to remember."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed call: the handler reports it when it formats
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
