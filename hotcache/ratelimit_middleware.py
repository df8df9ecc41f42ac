"""RateLimitMiddleware: global rules from ``HOTCACHE['RATELIMIT_RULES']``, all checked in one Redis round trip.

A rule is a dict::

    {"name": "login-burst", "rate": "5/10s", "key": "ip", "path": "/accounts/login/",
     "methods": ["POST"], "policy": "closed", "headers": True}

``name``, ``rate`` and ``key`` are required. ``path`` is a prefix (a string starting with ``^`` is a
regex matched against ``path_info``); ``url_name`` is a URL name (or ``namespace:name``, or a list);
a rule with neither matches every path. ``methods`` limits it to those methods. ``policy`` is the
outage policy (open | closed | local; default ``RATELIMIT_DEFAULT_POLICY``). ``headers`` opts the rule
into the IETF ``RateLimit-Policy`` / ``RateLimit`` fields. ``cost`` weighs each request (default 1).
``on_missing_key`` says what happens when the rule's key has no value for a request (no usable
client address, ``user`` for an anonymous visitor, a missing header): ``skip`` (the rule does not
apply), ``shared`` (one bucket for all such requests) or ``deny``; the default is ``shared`` for
``ip`` and ``user_or_ip`` and ``skip`` for the other keys (``default_on_missing_key``).

Place the middleware after AuthenticationMiddleware when a rule keys on the user. It works under
WSGI and ASGI: in async mode the user is resolved with ``auser()`` and the (sync) core runs in a
worker thread through ``sync_to_async(thread_sensitive=False)``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.utils.module_loading import import_string

from hotcache import metering
from hotcache.conf import hotcache_settings
from hotcache.ratelimit import (
    ACCESSOR_KEYS,
    ADDRESS_KEYS,
    MISSING_KEY_CHOICES,
    POLICIES,
    SHARED_IDENTIFIER,
    SIMPLE_KEYS,
    Decision,
    InvalidRate,
    Limit,
    default_on_missing_key,
    evaluate,
    key_value,
    parse_rate,
    refuse_missing,
    reset_local_state,
    settings_snapshot,
)

__all__ = ["NAME_PATTERN", "RULE_FIELDS", "CompiledRule", "RateLimitMiddleware", "check_request",
           "compiled_rules", "rule_errors", "rule_warnings"]

log = logging.getLogger("hotcache.ratelimit")

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")  # also safe inside a structured-field string
RULE_FIELDS = frozenset({"name", "rate", "key", "path", "url_name", "methods", "policy", "headers", "cost",
                         "on_missing_key"})
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")  # an HTTP token (RFC 9110)
_FIELD_NAME = re.compile(r"[^\x00-\x1f\x7f-\x9f\ud800-\udfff]{1,128}")  # printable, as keys.text
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    limit: int
    window: int
    key: str | Callable[..., Any]
    path: str | None
    regex: re.Pattern[str] | None
    url_names: frozenset[str] | None
    methods: frozenset[str] | None
    policy: str | None
    headers: bool
    cost: int
    on_missing_key: str = "skip"  # skip | shared | deny (compiled_rules fills in the key's default)

    @property
    def needs_user(self) -> bool:
        return callable(self.key) or self.key in ("user", "user_or_ip") or "." in str(self.key)

    def matches_path(self, request: HttpRequest, url_name: Callable[[], set[str]]) -> bool:
        if self.methods is not None and request.method not in self.methods:
            return False
        path = request.path_info
        if self.regex is not None and not self.regex.match(path):
            return False
        if self.path is not None and not path.startswith(self.path):
            return False
        return not (self.url_names is not None and not (self.url_names & url_name()))


def rule_errors(index: int, rule: Any, seen: set[str]) -> list[tuple[str, str, str]]:
    """Problems of one rule as (check id, message, hint); empty when it is valid. Used by checks and compile."""
    where = f"HOTCACHE['RATELIMIT_RULES'][{index}]"
    if not isinstance(rule, dict):
        return [("hotcache.E017", f"{where} is a {type(rule).__name__}, not a dict.",
                 "Each rule is a dict with at least 'name', 'rate' and 'key'.")]
    name = rule.get("name")
    label = f"{where} (rule {name!r})" if name else where
    errors: list[tuple[str, str, str]] = []
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        errors.append(("hotcache.E012", f"{where} has a missing or invalid 'name' {name!r}.",
                       "Give every rule a unique name of 1-64 characters from A-Z a-z 0-9 _ . : -."))
    elif name in seen:
        errors.append(("hotcache.E013", f"{label}: the name is used by another rule.",
                       "Rule names must be unique; they name the counters, headers and metrics."))
    else:
        seen.add(name)
    unknown = sorted(set(rule) - RULE_FIELDS)
    if unknown:
        errors.append(("hotcache.E017", f"{label} has unknown fields {unknown}.",
                       f"Use only {sorted(RULE_FIELDS)}."))
    rate = rule.get("rate")
    try:
        if rate is None:
            raise InvalidRate("'rate' is missing")
        parse_rate(rate)
    except InvalidRate as exc:
        errors.append(("hotcache.E010", f"{label} has an unparsable rate: {exc}.",
                       "Write the rate as '<count>/<n><s|m|h|d>', e.g. '100/m', '5/10s', '1000/5m', '10000/d'."))
    key = rule.get("key")
    if not _key_ok(key):
        errors.append(("hotcache.E011", f"{label} has an unknown key type {key!r}.",
                       "Use ip, user, user_or_ip, api_key, header:<name>, get:<name>, post:<name> (names of "
                       "1-128 printable characters; a header name is an HTTP token), a callable (group, request) "
                       "or the dotted path of one."))
    policy = rule.get("policy")
    if policy is not None and policy not in POLICIES:
        errors.append(("hotcache.E014", f"{label} has an unknown outage policy {policy!r:.80}.",
                       "Use 'open', 'closed' or 'local' (or leave it out for RATELIMIT_DEFAULT_POLICY)."))
    missing = rule.get("on_missing_key")
    if missing is not None and missing not in MISSING_KEY_CHOICES:
        errors.append(("hotcache.E014", f"{label} has an unknown on_missing_key {missing!r:.80}.",
                       "Use 'skip', 'shared' or 'deny' (or leave it out: 'shared' for ip and user_or_ip keys, "
                       "'skip' for the others)."))
    path = rule.get("path")
    if path is not None:
        if not isinstance(path, str) or not path:
            errors.append(("hotcache.E015", f"{label} has an invalid path {path!r}.",
                           "Use a path prefix such as '/api/' or a regex starting with '^'."))
        elif path.startswith("^"):
            try:
                re.compile(path)
            except re.error as exc:
                errors.append(("hotcache.E015", f"{label} has a bad path regex {path!r}: {exc}.",
                               "Fix the regular expression (a path starting with '^' is a regex)."))
    url_name = rule.get("url_name")
    if url_name is not None and not (
        isinstance(url_name, str) or (isinstance(url_name, list | tuple) and all(isinstance(u, str) for u in url_name))
    ):
        errors.append(("hotcache.E017", f"{label} has an invalid url_name {url_name!r}.",
                       "Use a URL name string or a list of them."))
    methods = rule.get("methods")
    if methods is not None and not (
        isinstance(methods, list | tuple) and methods and all(str(m).upper() in _HTTP_METHODS for m in methods)
    ):
        errors.append(("hotcache.E017", f"{label} has invalid methods {methods!r}.",
                       "Use a non-empty list of HTTP methods such as ['POST'], or leave it out for all."))
    headers = rule.get("headers", False)
    if not isinstance(headers, bool):
        errors.append(("hotcache.E017", f"{label} has headers={headers!r}; it must be True or False.",
                       "Set 'headers': True to send RateLimit-Policy / RateLimit for this rule."))
    cost = rule.get("cost", 1)
    if not isinstance(cost, int) or isinstance(cost, bool) or cost < 1:
        errors.append(("hotcache.E017", f"{label} has cost={cost!r}; it must be a whole number >= 1.",
                       "Leave 'cost' out (1) or give a positive integer."))
    return errors


def rule_warnings(index: int, rule: Any) -> list[tuple[str, str, str]]:
    """Warnings about one (valid) rule as (check id, message, hint): an address-keyed rule that skips
    requests without a usable client address, which then go unlimited by it."""
    if not isinstance(rule, dict) or rule.get("key") not in ADDRESS_KEYS or rule.get("on_missing_key") != "skip":
        return []
    label = f"HOTCACHE['RATELIMIT_RULES'][{index}] (rule {rule.get('name')!r})"
    return [("hotcache.W010",
             f"{label} keys on {rule['key']!r} with on_missing_key='skip': a request without a usable client "
             "address (REMOTE_ADDR empty or not an IP, e.g. a server on a Unix socket) is not limited by it.",
             "Leave on_missing_key out ('shared': such requests share one bucket) or set 'deny'. Behind a proxy "
             "on a Unix socket, add 'unix' to TRUSTED_PROXIES so its X-Forwarded-For names the client. "
             "Silence hotcache.W010 if skipping them is intended.")]


def _key_ok(key: Any) -> bool:
    if callable(key):
        return True
    if not isinstance(key, str) or not key:
        return False
    if key in SIMPLE_KEYS:
        return True
    if ":" in key:
        accessor, name = key.split(":", 1)
        if accessor == "header":
            return bool(_HEADER_NAME.fullmatch(name))
        return accessor in ACCESSOR_KEYS and bool(_FIELD_NAME.fullmatch(name))
    if "." in key:
        try:
            return callable(import_string(key))
        except ImportError:
            return False
    return False


_cache_lock = threading.Lock()
_compiled: tuple[Any, Any, tuple[CompiledRule, ...]] | None = None


def compiled_rules() -> tuple[CompiledRule, ...]:
    """RATELIMIT_RULES compiled once per settings value; invalid rules are skipped (and logged; see checks).

    Cached on the identity of the HOTCACHE dict and of its rules list (one attribute read per request);
    override_settings / assigning a new HOTCACHE also clears it through setting_changed.
    """
    global _compiled
    source = getattr(django_settings, "HOTCACHE", None)
    cached = _compiled
    if cached is not None and cached[0] is source:
        return cached[2]
    raw = hotcache_settings.RATELIMIT_RULES or []
    if cached is not None and cached[1] is raw:
        with _cache_lock:
            _compiled = (source, raw, cached[2])
        return cached[2]
    out: list[CompiledRule] = []
    seen: set[str] = set()
    for i, rule in enumerate(raw if isinstance(raw, list | tuple) else []):
        problems = rule_errors(i, rule, seen)
        if problems:
            log.error("hotcache: rate limit rule skipped: %s", "; ".join(p[1] for p in problems))
            continue
        limit, window = parse_rate(rule["rate"])
        path = rule.get("path")
        url_name = rule.get("url_name")
        key = rule["key"]
        if isinstance(key, str) and key not in SIMPLE_KEYS and ":" not in key and "." in key:
            key = import_string(key)
        out.append(
            CompiledRule(
                name=rule["name"],
                limit=limit,
                window=window,
                key=key,
                path=path if path and not path.startswith("^") else None,
                regex=re.compile(path) if path and path.startswith("^") else None,
                url_names=None if url_name is None else frozenset([url_name] if isinstance(url_name, str)
                                                                  else url_name),
                methods=None if rule.get("methods") is None else frozenset(str(m).upper() for m in rule["methods"]),
                policy=rule.get("policy"),
                headers=bool(rule.get("headers", False)),
                cost=int(rule.get("cost", 1)),
                on_missing_key=rule.get("on_missing_key") or default_on_missing_key(key),
            )
        )
    result = tuple(out)
    with _cache_lock:
        _compiled = (source, raw, result)
    return result


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    global _compiled
    if setting == "HOTCACHE":
        _compiled = None
        reset_local_state()


setting_changed.connect(_on_setting_changed, dispatch_uid="hotcache.ratelimit_middleware.reset")


def check_request(request: HttpRequest) -> Decision:
    """Evaluate every matching rule for ``request`` (one round trip) and store it in ``request.ratelimit``."""
    rules = compiled_rules()
    names: set[str] | None = None

    def url_names() -> set[str]:
        nonlocal names
        if names is None:
            try:
                match = resolve(request.path_info)
                names = {n for n in (match.url_name, match.view_name) if n}
            except Resolver404:
                names = set()
        return names

    limits: list[Limit] = []
    refused: list[Limit] = []  # rules with no identifier for this request and on_missing_key="deny"
    seen: dict[str, str | None] = {}  # a built-in key (ip, user...) is resolved once per request
    for rule in rules:
        if not rule.matches_path(request, url_names):
            continue
        if isinstance(rule.key, str):
            if rule.key not in seen:
                seen[rule.key] = key_value(rule.key, request, rule.name)
            ident = seen[rule.key]
        else:
            ident = key_value(rule.key, request, rule.name)
        if ident is not None:
            limits.append(Limit(rule.name, ident, rule.limit, rule.window, rule.policy or "", rule.cost,
                                rule.headers))
            continue
        metering.event("ratelimit", f"missing_key:{rule.name}")
        if rule.on_missing_key == "skip":
            continue
        limit = Limit(rule.name, SHARED_IDENTIFIER, rule.limit, rule.window, rule.policy or "", rule.cost,
                      rule.headers)
        limits.append(limit)
        if rule.on_missing_key == "deny":
            refused.append(limit)
    decision = refuse_missing(limits, refused) if refused else evaluate(limits, increment=True)
    request.ratelimit = decision  # type: ignore[attr-defined]
    return decision


def _denied_response(decision: Decision) -> HttpResponse:
    status = settings_snapshot().status_code
    retry = decision.retry_after
    first = decision.denied[0].name if decision.denied else None
    response = JsonResponse({"detail": "Too many requests.", "rule": first, "retry_after": retry}, status=status)
    response["Retry-After"] = str(retry)
    return response


def add_headers(response: HttpResponse, decision: Decision) -> None:
    """IETF RateLimit-Policy / RateLimit (and legacy X-RateLimit-*) for the rules that opt in."""
    shown = [r for r in decision.results if r.headers and r.evaluated]
    if not shown:
        return
    response["RateLimit-Policy"] = ", ".join(f'"{r.name}";q={r.limit};w={r.window}' for r in shown)
    response["RateLimit"] = ", ".join(f'"{r.name}";r={r.remaining};t={math.ceil(r.reset)}' for r in shown)
    if settings_snapshot().legacy_headers:
        tightest = min(shown, key=lambda r: (r.remaining, -r.reset))
        response["X-RateLimit-Limit"] = str(tightest.limit)
        response["X-RateLimit-Remaining"] = str(tightest.remaining)
        response["X-RateLimit-Reset"] = str(math.ceil(tightest.reset))  # delta seconds, not an epoch


class RateLimitMiddleware:
    """Apply HOTCACHE['RATELIMIT_RULES'] to every request; 429 + Retry-After when any matching rule denies."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        decision = check_request(request)
        if not decision.allowed:
            response = _denied_response(decision)
        else:
            response = self.get_response(request)
        add_headers(response, decision)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        if hasattr(request, "auser") and any(r.needs_user for r in compiled_rules()):
            request.user = await request.auser()  # resolve the user on the event loop, not in the worker
        decision = await sync_to_async(check_request, thread_sensitive=False)(request)
        if not decision.allowed:
            response = _denied_response(decision)
        else:
            response = await self.get_response(request)
        add_headers(response, decision)
        return response
