"""Authenticated Redis records: every value hotcache reads back from Redis and acts on carries an HMAC.

Whoever can write to Redis (a shared instance, a leaked password, a compromised neighbour) must not
be able to choose a value hotcache trusts: a key's owner or limit, a workbench owner, a cached user.
A record is sealed as ``<hex signature>.<body>``; the signature is HMAC-SHA256 (Django's
``salted_hmac``) under ``SECRET_KEY`` over a purpose (one per record kind), the record's identity
(usually its key's subject) and the body, so a record cannot be replayed under another identity or
as another kind of record. ``SECRET_KEY_FALLBACKS`` are accepted on read, so rotating the key turns
no entry into a miss until the fallbacks are dropped.

A record that fails verification, does not decode, or misses a field is *absent*: callers reload it
from the durable store (or refuse where there is none) and call :func:`tampered`, which counts
``ev:<feature>:tampered`` and logs once per key per minute.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from django.conf import settings as django_settings
from django.utils.encoding import force_bytes

from hotcache import clock, metering

__all__ = ["seal", "seal_json", "signature", "tampered", "unseal", "unseal_json", "verify"]

log = logging.getLogger("hotcache.signing")

_SALT = "hotcache.record"
_SIG_LENGTH = 64  # hex digits of an HMAC-SHA256
_LOG_EVERY = 60.0  # seconds: one warning per tampered key per minute
_LOG_MEMORY = 1024  # keys remembered for that; the oldest are forgotten first


def _message(purpose: str, ident: str, body: str) -> str:
    # Newlines separate the parts; purpose and ident are hotcache's own names (no newline in them),
    # so two different (purpose, ident, body) triples never give the same message.
    return f"{purpose}\n{ident}\n{body}"


def signature(purpose: str, ident: str, body: str, *, secret: str | bytes | None = None) -> str:
    """The hex HMAC of ``body`` for record kind ``purpose`` and identity ``ident``.

    The same value as Django's ``salted_hmac(_SALT, message, secret, algorithm="sha256")``; the derived
    key is computed once per secret instead of on every call (it is on every request's path).
    """
    key = _derived_key(django_settings.SECRET_KEY if secret is None else secret)
    message = _message(purpose, ident, body).encode("utf-8", "surrogatepass")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=16)
def _derived_key(secret: str | bytes) -> bytes:
    return hashlib.sha256(_SALT.encode() + force_bytes(secret)).digest()


def _secrets() -> list[Any]:
    return [django_settings.SECRET_KEY, *getattr(django_settings, "SECRET_KEY_FALLBACKS", [])]


def verify(purpose: str, ident: str, body: str, sig: object) -> bool:
    """True when ``sig`` is the signature of ``body`` under SECRET_KEY or one of its fallbacks.

    Constant time per secret; any non-text or non-hex ``sig`` is simply False (never an exception).
    """
    if not isinstance(sig, str) or len(sig) != _SIG_LENGTH or not sig.isascii():
        return False
    given = sig.encode("ascii")
    ok = False
    for secret in _secrets():
        ok |= hmac.compare_digest(given, signature(purpose, ident, body, secret=secret).encode("ascii"))
    return ok


def seal(purpose: str, ident: str, body: str) -> str:
    """``<signature>.<body>``, ready to store in Redis."""
    return f"{signature(purpose, ident, body)}.{body}"


def unseal(purpose: str, ident: str, raw: object) -> str | None:
    """The body of a sealed record, or None when ``raw`` is missing, undecodable or not signed by us."""
    if raw is None:
        return None
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(raw, str):
        return None
    sig, dot, body = raw.partition(".")
    if not dot or not verify(purpose, ident, body, sig):
        return None
    return body


def seal_json(purpose: str, ident: str, value: Any) -> str:
    """Seal ``value`` as compact JSON (``value`` must be JSON-serialisable)."""
    return seal(purpose, ident, json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def unseal_json(
    purpose: str, ident: str, raw: object, *, required: Mapping[str, type | tuple[type, ...]] | None = None
) -> Any | None:
    """The JSON value of a sealed record, or None when it is not ours or lacks a field of ``required``.

    ``required`` maps field names to the type (or types) the field must have; the value must then be
    a JSON object. A record that is signed but malformed (an older format, a bug) is absent too.
    """
    body = unseal(purpose, ident, raw)
    if body is None:
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # a signed body nested too deep to decode is no record of ours
        return None
    if required is not None:
        if not isinstance(value, dict):
            return None
        for name, kind in required.items():
            field = value.get(name)
            if not isinstance(field, kind) or (isinstance(field, bool) and bool not in _as_tuple(kind)):
                return None
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


_logged: OrderedDict[str, float] = OrderedDict()
_logged_lock = threading.Lock()


def tampered(feature: str, key: str, why: str = "failed verification") -> None:
    """Record that the Redis record at ``key`` was not trusted: count it, and log once per key per minute."""
    metering.event(feature, "tampered")
    now = clock.monotonic()
    with _logged_lock:
        last = _logged.get(key)
        if last is not None and now - last < _LOG_EVERY:
            return
        _logged[key] = now
        _logged.move_to_end(key)
        while len(_logged) > _LOG_MEMORY:
            _logged.popitem(last=False)
    log.warning("hotcache %s: Redis record %s %s; treated as absent", feature, key, why)


def _reset() -> None:
    """Forget which keys were logged (tests)."""
    with _logged_lock:
        _logged.clear()
