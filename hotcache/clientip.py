"""The client's IP address, as far as it can be trusted, and the bucket it is rate limited in.

By default only ``REMOTE_ADDR`` is believed. A proxy header (``X-Forwarded-For``, or RFC 7239
``Forwarded`` when ``HOTCACHE['TRUSTED_PROXY_HEADER'] = "forwarded"``) is read only when the peer
is in ``HOTCACHE['TRUSTED_PROXIES']``, and it is walked from the right: each hop is believed only
while the address that handed it to us is a trusted proxy. The first untrusted address is the
client. Everything left of it was written by the client and is ignored, so a client can never
choose its bucket by sending headers. A malformed hop reached by the walk falls back to
``REMOTE_ADDR`` (never an exception).

A server on a Unix socket has no peer address (``REMOTE_ADDR`` empty, absent or not an IP); such a
request has no usable client address unless ``TRUSTED_PROXIES`` holds ``"unix"``: then the peer on
the socket is a trusted proxy and its header is walked as above.

Buckets group addresses: IPv6 by ``IPV6_PREFIX`` (default /64, what one subscriber usually gets),
IPv4 by ``IPV4_PREFIX`` (default /32); django-ratelimit's ``RATELIMIT_IPV6_MASK`` / ``RATELIMIT_IPV4_MASK`` when
HOTCACHE does not set them.

django-ratelimit's ``RATELIMIT_IP_META_KEY`` names where the client address is instead: a callable
``(request)`` or its dotted path, or a ``request.META`` key. A META key that is a request header (``HTTP_*``,
which any client can send) is believed only from a trusted proxy when ``TRUSTED_PROXIES`` is set (from every
peer when it is empty, as django-ratelimit; ``manage.py check`` warns). No usable address from that source
falls back to the walk above.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from functools import lru_cache
from typing import Any

from django.conf import settings as django_settings
from django.utils.module_loading import import_string

from hotcache.conf import DEFAULTS, hotcache_settings

__all__ = [
    "MAX_HOPS",
    "UNIX_PEER",
    "bucket",
    "client_bucket",
    "client_ip",
    "parse_address",
    "trusted_networks",
    "trusts_unix_peer",
]

log = logging.getLogger("hotcache.ratelimit")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_HOPS = 32  # a longer chain is not walked further (falls back to REMOTE_ADDR)
UNIX_PEER = "unix"  # the TRUSTED_PROXIES entry that trusts a peer without an address (a Unix socket)
_MAX_HEADER = 4096
_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?")
_V4_PORT = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}")


def parse_address(text: str) -> IPAddress | None:
    """An address from a header or REMOTE_ADDR (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``), else None."""
    text = text.strip().strip('"').strip()
    if not text or len(text) > 64:
        return None
    m = _BRACKETED.fullmatch(text) or _V4_PORT.fullmatch(text)
    if m:
        text = m.group(1)
    if "%" in text:  # zone ids are meaningless off-link
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@lru_cache(maxsize=32)
def _networks(cidrs: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for cidr in cidrs:
        if cidr.strip().lower() == UNIX_PEER:
            continue
        try:
            out.append(ipaddress.ip_network(str(cidr).strip(), strict=False))
        except ValueError:
            log.error("hotcache: HOTCACHE['TRUSTED_PROXIES'] entry %r is not a CIDR; ignored", cidr)
    return tuple(out)


def _proxies() -> tuple[str, ...]:
    value = hotcache_settings.TRUSTED_PROXIES or ()
    if isinstance(value, str):
        value = (value,)
    return tuple(str(v) for v in value)


def trusted_networks() -> tuple[IPNetwork, ...]:
    return _networks(_proxies())


def trusts_unix_peer() -> bool:
    """True when TRUSTED_PROXIES holds "unix": a peer without an IP address (a Unix socket) is a proxy."""
    return any(v.strip().lower() == UNIX_PEER for v in _proxies())


def _trusted(addr: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(addr.version == net.version and addr in net for net in networks)


def _hops_xff(meta: Any) -> list[str] | None:
    raw = meta.get("HTTP_X_FORWARDED_FOR")
    if raw is None:
        return []
    if not isinstance(raw, str) or len(raw) > _MAX_HEADER:
        return None
    return [h for h in (p.strip() for p in raw.split(",")) if h] or None


def _hops_forwarded(meta: Any) -> list[str] | None:
    raw = meta.get("HTTP_FORWARDED")
    if raw is None:
        return []
    if not isinstance(raw, str) or len(raw) > _MAX_HEADER:
        return None
    hops: list[str] = []
    for element in raw.split(","):
        value = None
        for pair in element.split(";"):
            name, sep, val = pair.partition("=")
            if sep and name.strip().lower() == "for":
                value = val.strip()
        if value is None:
            return None  # an element without for= cannot be attributed
        hops.append(value)
    return hops or None


def _from_meta_key(request: Any, meta: Any, source: Any) -> IPAddress | None:
    """The address RATELIMIT_IP_META_KEY's ``source`` gives (a callable, or a META key), if usable."""
    if callable(source):
        raw = source(request)
    else:
        if source.startswith("HTTP_") and (trusted_networks() or trusts_unix_peer()):
            # A request header: believed only from a trusted proxy once TRUSTED_PROXIES says which those are.
            peer = meta.get("REMOTE_ADDR")
            addr = parse_address(peer) if isinstance(peer, str) else None
            if not (_trusted(addr, trusted_networks()) if addr is not None else trusts_unix_peer()):
                return None
        raw = meta.get(source)
    return parse_address(raw) if isinstance(raw, str) else None


def client_ip(request: Any) -> IPAddress | None:
    """The client's address: RATELIMIT_IP_META_KEY's source when set and usable, else REMOTE_ADDR, or the
    first untrusted hop of the trusted proxies' header.

    None when there is no usable address: REMOTE_ADDR is not an IP and no trusted Unix-socket proxy
    (``"unix"`` in TRUSTED_PROXIES) named the client.
    """
    meta = getattr(request, "META", {}) or {}
    source = _fast_settings()[3]  # RATELIMIT_IP_META_KEY
    if source is not None:
        found = _from_meta_key(request, meta, source)
        if found is not None:
            return found
    raw = meta.get("REMOTE_ADDR")
    remote = parse_address(raw) if isinstance(raw, str) else None
    networks = trusted_networks()
    if remote is None:
        if not trusts_unix_peer():
            return None
    elif not networks or not _trusted(remote, networks):
        return remote
    header = str(hotcache_settings.TRUSTED_PROXY_HEADER or "").lower()
    hops = _hops_forwarded(meta) if header == "forwarded" else _hops_xff(meta)
    if hops is None:
        return remote  # malformed header
    current = remote  # None: the trusted peer on a Unix socket
    for n, hop in enumerate(reversed(hops)):
        if current is not None and not _trusted(current, networks):
            return current
        if n >= MAX_HOPS:
            return remote
        addr = parse_address(hop)
        if addr is None:
            return remote  # unknown / obfuscated / garbage hop reached by the walk
        current = addr
    # Every hop came through trusted proxies; the leftmost is the client as far as anyone can tell.
    return current


def bucket(addr: IPAddress) -> str:
    """The rate-limit bucket of an address: its /IPV4_PREFIX or /IPV6_PREFIX network."""
    _, v4, v6, _ = _fast_settings()
    return _bucket(addr, v4, v6)


def _bucket(addr: IPAddress, v4: int, v6: int) -> str:
    if addr.version == 6:
        prefix = v6
        if prefix == 128:
            return str(addr)
        return str(ipaddress.IPv6Network((addr, prefix), strict=False))
    prefix = v4
    if prefix == 32:
        return str(addr)
    return str(ipaddress.IPv4Network((addr, prefix), strict=False))


def _prefix(value: Any, top: int, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= top:
        return value
    return default


def _effective_prefix(name: str, mask: str, top: int) -> int:
    """HOTCACHE[name] when set there, else django-ratelimit's ``mask`` setting, else the default."""
    user = hotcache_settings.user_settings
    value = user[name] if name in user else getattr(django_settings, mask, DEFAULTS[name])
    return _prefix(value, top, DEFAULTS[name])


def _meta_source() -> Any:
    """RATELIMIT_IP_META_KEY as a callable or a META key, or None (unset, or unusable: manage.py check says)."""
    value = getattr(django_settings, "RATELIMIT_IP_META_KEY", None)
    if isinstance(value, str) and "." in value:
        try:
            value = import_string(value)
        except ImportError:
            log.error("hotcache: RATELIMIT_IP_META_KEY %r does not import; the client address is REMOTE_ADDR", value)
            return None
    return value if callable(value) or (isinstance(value, str) and value) else None


def _build_fast() -> tuple[bool, int, int, Any]:
    return (
        bool(hotcache_settings.TRUSTED_PROXIES),
        _effective_prefix("IPV4_PREFIX", "RATELIMIT_IPV4_MASK", 32),
        _effective_prefix("IPV6_PREFIX", "RATELIMIT_IPV6_MASK", 128),
        _meta_source(),
    )


def _fast_settings() -> tuple[bool, int, int, Any]:
    """(proxies configured?, IPv4 prefix, IPv6 prefix, IP_META_KEY source), built once per settings
    (HOTCACHE a new dict, or setting_changed for HOTCACHE or a RATELIMIT_* setting)."""
    return hotcache_settings.derived("clientip.fast", _build_fast)


def client_bucket(request: Any) -> str | None:
    """client_ip() grouped into its bucket, or None when there is no usable client address."""
    meta = getattr(request, "META", None) or {}
    proxies, v4, v6, source = _fast_settings()
    if not proxies and source is None:
        # The common case (no proxies): the bucket depends on REMOTE_ADDR alone; parse each address once.
        remote = meta.get("REMOTE_ADDR")
        if not isinstance(remote, str) or len(remote) > 64:
            return None  # not an address (parse_address refuses it), and not worth a cache entry
        return _bucket_of(remote, v4, v6)
    addr = client_ip(request)
    return None if addr is None else _bucket(addr, v4, v6)


@lru_cache(maxsize=4096)
def _bucket_of(remote: str, v4: int, v6: int) -> str | None:
    addr = parse_address(remote)
    return None if addr is None else _bucket(addr, v4, v6)
