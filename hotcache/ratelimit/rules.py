"""RATELIMIT_RULES: each rule's problems (for the system checks), the rules compiled once per HOTCACHE dict
(``hotcache_settings.derived``), and the ``Limit`` s the matching rules give for one request.

See docs/ratelimit.md ("Global rules").
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.utils.module_loading import import_string

from hotcache import metering
from hotcache.conf import hotcache_settings
from hotcache.ratelimit.identifiers import (
    ACCESSOR_KEYS,
    ADDRESS_KEYS,
    MISSING_KEY_CHOICES,
    SHARED_IDENTIFIER,
    SIMPLE_KEYS,
    default_on_missing_key,
    key_value,
)
from hotcache.ratelimit.limits import Limit
from hotcache.ratelimit.outage import POLICIES
from hotcache.ratelimit.rates import InvalidRate, parse_rate

__all__ = [
    "NAME_PATTERN",
    "RULE_FIELDS",
    "CompiledRule",
    "compiled_rules",
    "limits_for",
    "rule_errors",
    "rule_warnings",
    "rules_need_user",
]

log = logging.getLogger("hotcache.ratelimit")

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")  # also safe inside a structured-field string
RULE_FIELDS = frozenset(
    {"name", "rate", "key", "path", "url_name", "methods", "policy", "headers", "cost", "on_missing_key"}
)
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")  # an HTTP token (RFC 9110)
_FIELD_NAME = re.compile(r"[^\x00-\x1f\x7f-\x9f\ud800-\udfff]{1,128}")  # printable, as keys.text
_LIMIT_CACHE = 4096  # identifiers per rule whose Limit is kept
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
# Optional rule fields that take one of a few words (hotcache.E014): field -> (its name in the message, the
# words, the hint).
_CHOICE_FIELDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "policy": (
        "outage policy",
        POLICIES,
        "Use 'open', 'closed' or 'local' (or leave it out for RATELIMIT_DEFAULT_POLICY).",
    ),
    "on_missing_key": (
        "on_missing_key",
        MISSING_KEY_CHOICES,
        "Use 'skip', 'shared' or 'deny' (or leave it out: 'shared' for ip and user_or_ip keys, 'skip' for the others).",
    ),
}


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
    # This rule's Limit per identifier, built and validated once per identifier instead of once per request.
    # Bounded (cleared when full); losing it only costs rebuilding. Dict reads and writes are atomic.
    _limits: dict[str, Limit] = field(default_factory=dict, compare=False, repr=False)
    # No method, path or URL name to match: every request matches (limits_for skips matches_path).
    matches_all: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        plain = self.methods is None and self.regex is None and self.path is None and self.url_names is None
        object.__setattr__(self, "matches_all", plain)  # frozen: set once here

    @property
    def needs_user(self) -> bool:
        return callable(self.key) or self.key in ("user", "user_or_ip") or "." in str(self.key)

    def limit_for(self, identifier: str) -> Limit:
        """This rule applied to ``identifier`` (the same Limit object for every request of that identifier)."""
        lim = self._limits.get(identifier)
        if lim is None:
            lim = Limit(self.name, identifier, self.limit, self.window, self.policy or "", self.cost, self.headers)
            if len(self._limits) >= _LIMIT_CACHE:
                self._limits.clear()
            self._limits[identifier] = lim
        return lim

    def matches_path(self, request: Any, url_name: Callable[[], set[str]]) -> bool:
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
        return [
            (
                "hotcache.E017",
                f"{where} is a {type(rule).__name__}, not a dict.",
                "Each rule is a dict with at least 'name', 'rate' and 'key'.",
            )
        ]
    name = rule.get("name")
    label = f"{where} (rule {name!r})" if name else where
    errors: list[tuple[str, str, str]] = []
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        errors.append(
            (
                "hotcache.E012",
                f"{where} has a missing or invalid 'name' {name!r}.",
                "Give every rule a unique name of 1-64 characters from A-Z a-z 0-9 _ . : -.",
            )
        )
    elif name in seen:
        errors.append(
            (
                "hotcache.E013",
                f"{label}: the name is used by another rule.",
                "Rule names must be unique; they name the counters, headers and metrics.",
            )
        )
    else:
        seen.add(name)
    unknown = sorted(set(rule) - RULE_FIELDS)
    if unknown:
        errors.append(("hotcache.E017", f"{label} has unknown fields {unknown}.", f"Use only {sorted(RULE_FIELDS)}."))
    rate = rule.get("rate")
    try:
        if rate is None:
            raise InvalidRate("'rate' is missing")
        parse_rate(rate)
    except InvalidRate as exc:
        errors.append(
            (
                "hotcache.E010",
                f"{label} has an unparsable rate: {exc}.",
                "Write the rate as '<count>/<n><s|m|h|d>', e.g. '100/m', '5/10s', '1000/5m', '10000/d'.",
            )
        )
    key = rule.get("key")
    if not _key_ok(key):
        errors.append(
            (
                "hotcache.E011",
                f"{label} has an unknown key type {key!r}.",
                "Use ip, user, user_or_ip, api_key, header:<name>, get:<name>, post:<name> (names of "
                "1-128 printable characters; a header name is an HTTP token), a callable (group, request) "
                "or the dotted path of one.",
            )
        )
    for choice_field, (what, choices, hint) in _CHOICE_FIELDS.items():
        value = rule.get(choice_field)
        if value is not None and value not in choices:
            errors.append(("hotcache.E014", f"{label} has an unknown {what} {value!r:.80}.", hint))
    path = rule.get("path")
    if path is not None:
        if not isinstance(path, str) or not path:
            errors.append(
                (
                    "hotcache.E015",
                    f"{label} has an invalid path {path!r}.",
                    "Use a path prefix such as '/api/' or a regex starting with '^'.",
                )
            )
        elif path.startswith("^"):
            try:
                re.compile(path)
            except re.error as exc:
                errors.append(
                    (
                        "hotcache.E015",
                        f"{label} has a bad path regex {path!r}: {exc}.",
                        "Fix the regular expression (a path starting with '^' is a regex).",
                    )
                )
    url_name = rule.get("url_name")
    if url_name is not None and not (
        isinstance(url_name, str) or (isinstance(url_name, list | tuple) and all(isinstance(u, str) for u in url_name))
    ):
        errors.append(
            (
                "hotcache.E017",
                f"{label} has an invalid url_name {url_name!r}.",
                "Use a URL name string or a list of them.",
            )
        )
    methods = rule.get("methods")
    if methods is not None and not (
        isinstance(methods, list | tuple) and methods and all(str(m).upper() in _HTTP_METHODS for m in methods)
    ):
        errors.append(
            (
                "hotcache.E017",
                f"{label} has invalid methods {methods!r}.",
                "Use a non-empty list of HTTP methods such as ['POST'], or leave it out for all.",
            )
        )
    headers = rule.get("headers", False)
    if not isinstance(headers, bool):
        errors.append(
            (
                "hotcache.E017",
                f"{label} has headers={headers!r}; it must be True or False.",
                "Set 'headers': True to send RateLimit-Policy / RateLimit for this rule.",
            )
        )
    cost = rule.get("cost", 1)
    if not isinstance(cost, int) or isinstance(cost, bool) or cost < 1:
        errors.append(
            (
                "hotcache.E017",
                f"{label} has cost={cost!r}; it must be a whole number >= 1.",
                "Leave 'cost' out (1) or give a positive integer.",
            )
        )
    return errors


def rule_warnings(index: int, rule: Any) -> list[tuple[str, str, str]]:
    """Warnings about one (valid) rule as (check id, message, hint): an address-keyed rule that skips
    requests without a usable client address, which then go unlimited by it."""
    if not isinstance(rule, dict) or rule.get("key") not in ADDRESS_KEYS or rule.get("on_missing_key") != "skip":
        return []
    label = f"HOTCACHE['RATELIMIT_RULES'][{index}] (rule {rule.get('name')!r})"
    return [
        (
            "hotcache.W010",
            f"{label} keys on {rule['key']!r} with on_missing_key='skip': a request without a usable client "
            "address (REMOTE_ADDR empty or not an IP, e.g. a server on a Unix socket) is not limited by it.",
            "Leave on_missing_key out ('shared': such requests share one bucket) or set 'deny'. Behind a proxy "
            "on a Unix socket, add 'unix' to TRUSTED_PROXIES so its X-Forwarded-For names the client. "
            "Silence hotcache.W010 if skipping them is intended.",
        )
    ]


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


def _compile() -> tuple[CompiledRule, ...]:
    raw = hotcache_settings.RATELIMIT_RULES or []
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
                url_names=None
                if url_name is None
                else frozenset([url_name] if isinstance(url_name, str) else url_name),
                methods=None if rule.get("methods") is None else frozenset(str(m).upper() for m in rule["methods"]),
                policy=rule.get("policy"),
                headers=bool(rule.get("headers", False)),
                cost=int(rule.get("cost", 1)),
                on_missing_key=rule.get("on_missing_key") or default_on_missing_key(key),
            )
        )
    return tuple(out)


def compiled_rules() -> tuple[CompiledRule, ...]:
    """RATELIMIT_RULES compiled once per HOTCACHE dict; invalid rules are skipped (and logged; see checks)."""
    return hotcache_settings.derived("ratelimit.rules", _compile)


def rules_need_user() -> bool:
    """Whether any rule keys on the user (the async middleware resolves ``request.auser()`` first then); answered
    once per HOTCACHE dict, not per request."""
    return hotcache_settings.derived("ratelimit.rules_need_user", lambda: any(r.needs_user for r in compiled_rules()))


def limits_for(request: Any, url_names: Callable[[], set[str]]) -> tuple[list[Limit], list[Limit]]:
    """The ``Limit`` s of the rules matching ``request``, and those of them to refuse (no identifier, ``deny``).

    ``url_names()`` gives the request's URL names; it is called only when a rule matches on them. A rule
    whose key gives no identifier is counted as ``missing_key:<rule>``, then skipped or put in the shared bucket.
    """
    limits: list[Limit] = []
    refused: list[Limit] = []  # rules with no identifier for this request and on_missing_key="deny"
    seen: dict[str, str | None] = {}  # a built-in key (ip, user...) is resolved once per request
    for rule in compiled_rules():
        if not (rule.matches_all or rule.matches_path(request, url_names)):
            continue
        key = rule.key
        if isinstance(key, str):
            ident = seen[key] if key in seen else seen.setdefault(key, key_value(key, request, rule.name))
        else:
            ident = key_value(key, request, rule.name)
        if ident is not None:
            limits.append(rule.limit_for(ident))
            continue
        metering.event("ratelimit", f"missing_key:{rule.name}")
        if rule.on_missing_key == "skip":
            continue
        limit = rule.limit_for(SHARED_IDENTIFIER)
        limits.append(limit)
        if rule.on_missing_key == "deny":
            refused.append(limit)
    return limits, refused
