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
IPv4 by ``IPV4_PREFIX`` (default /32).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from functools import lru_cache
from typing import Any

from django.conf import settings as django_settings

from hotcache.conf import hotcache_settings

__all__ = ["MAX_HOPS", "UNIX_PEER", "bucket", "client_bucket", "client_ip", "parse_address", "trusted_networks",
           "trusts_unix_peer"]

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


def client_ip(request: Any) -> IPAddress | None:
    """The client's address: REMOTE_ADDR, or the first untrusted hop of the trusted proxies' header.

    None when there is no usable address: REMOTE_ADDR is not an IP and no trusted Unix-socket proxy
    (``"unix"`` in TRUSTED_PROXIES) named the client.
    """
    meta = getattr(request, "META", {}) or {}
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
    if addr.version == 6:
        prefix = _prefix(hotcache_settings.IPV6_PREFIX, 128, 64)
        if prefix == 128:
            return str(addr)
        return str(ipaddress.IPv6Network((addr, prefix), strict=False))
    prefix = _prefix(hotcache_settings.IPV4_PREFIX, 32, 32)
    if prefix == 32:
        return str(addr)
    return str(ipaddress.IPv4Network((addr, prefix), strict=False))


def _prefix(value: Any, top: int, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= top:
        return value
    return default


_fast: tuple[Any, bool, Any, Any] | None = None


def _fast_settings() -> tuple[Any, bool, Any, Any]:
    """(HOTCACHE dict, proxies configured?, IPV4_PREFIX, IPV6_PREFIX), re-read when HOTCACHE is a new object."""
    global _fast
    source = getattr(django_settings, "HOTCACHE", None)
    fast = _fast
    if fast is None or fast[0] is not source:
        fast = _fast = (source, bool(hotcache_settings.TRUSTED_PROXIES), hotcache_settings.IPV4_PREFIX,
                        hotcache_settings.IPV6_PREFIX)
    return fast


def client_bucket(request: Any) -> str | None:
    """client_ip() grouped into its bucket, or None when REMOTE_ADDR itself is unusable."""
    meta = getattr(request, "META", None) or {}
    _, proxies, v4, v6 = _fast_settings()
    if not proxies:
        # The common case (no proxies): the bucket depends on REMOTE_ADDR alone; parse each address once.
        remote = meta.get("REMOTE_ADDR")
        if not isinstance(remote, str) or len(remote) > 64:
            return None  # not an address (parse_address refuses it), and not worth a cache entry
        return _bucket_of(remote, v4, v6)
    addr = client_ip(request)
    return None if addr is None else bucket(addr)


@lru_cache(maxsize=4096)
def _bucket_of(remote: str, v4: Any, v6: Any) -> str | None:
    addr = parse_address(remote)
    return None if addr is None else bucket(addr)
