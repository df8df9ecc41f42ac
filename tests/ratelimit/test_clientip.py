"""Client IP: REMOTE_ADDR by default; proxy headers only through trusted proxies, walked from the right."""

import pytest
from django.test import RequestFactory

from hotcache.clientip import bucket, client_bucket, client_ip, parse_address

rf = RequestFactory()

PROXY = "10.0.0.1"
TRUSTED = ["10.0.0.0/8", "2001:db8:ffff::/48"]


def req(remote=PROXY, **headers):
    return rf.get("/", REMOTE_ADDR=remote, **headers)


# (case, TRUSTED_PROXIES, REMOTE_ADDR, headers, expected client_ip(), expected bucket). Each row asserts
# client_ip() itself as well as client_bucket(), whose no-proxy fast path does not call client_ip().
MATRIX = [
    ("no proxy configured: XFF ignored", [], "203.0.113.9", {"HTTP_X_FORWARDED_FOR": "1.1.1.1"}, "203.0.113.9",
     "203.0.113.9"),
    ("no proxy configured: Forwarded ignored", [], "203.0.113.9", {"HTTP_FORWARDED": "for=1.1.1.1"},
     "203.0.113.9", "203.0.113.9"),
    ("untrusted peer: XFF ignored", TRUSTED, "203.0.113.9", {"HTTP_X_FORWARDED_FOR": "1.1.1.1"}, "203.0.113.9",
     "203.0.113.9"),
    ("trusted proxy: its appended hop is the client", TRUSTED, PROXY, {"HTTP_X_FORWARDED_FOR": "198.51.100.7"},
     "198.51.100.7", "198.51.100.7"),
    ("client-supplied left entries are ignored", TRUSTED, PROXY,
     {"HTTP_X_FORWARDED_FOR": "6.6.6.6, 7.7.7.7, 198.51.100.7"}, "198.51.100.7", "198.51.100.7"),
    ("two trusted proxies are walked through", TRUSTED, PROXY,
     {"HTTP_X_FORWARDED_FOR": "6.6.6.6, 198.51.100.7, 10.9.9.9"}, "198.51.100.7", "198.51.100.7"),
    ("client claims a trusted address left of its own", TRUSTED, PROXY,
     {"HTTP_X_FORWARDED_FOR": "10.1.1.1, 198.51.100.7"}, "198.51.100.7", "198.51.100.7"),
    ("garbage hop reached by the walk -> REMOTE_ADDR", TRUSTED, PROXY, {"HTTP_X_FORWARDED_FOR": "not-an-ip"}, PROXY,
     PROXY),
    ("garbage left of the client is never reached", TRUSTED, PROXY,
     {"HTTP_X_FORWARDED_FOR": "<script>, 198.51.100.7"}, "198.51.100.7", "198.51.100.7"),
    ("empty XFF -> REMOTE_ADDR", TRUSTED, PROXY, {"HTTP_X_FORWARDED_FOR": " , "}, PROXY, PROXY),
    ("oversized XFF -> REMOTE_ADDR", TRUSTED, PROXY, {"HTTP_X_FORWARDED_FOR": "1.2.3.4," * 1000}, PROXY, PROXY),
    ("more hops than MAX_HOPS -> REMOTE_ADDR", TRUSTED, PROXY, {"HTTP_X_FORWARDED_FOR": ", ".join(["10.0.0.9"] * 40)},
     PROXY, PROXY),
    ("latin-1 bytes in XFF -> REMOTE_ADDR", TRUSTED, PROXY, {"HTTP_X_FORWARDED_FOR": "\xff\xfe1.2.3.4"}, PROXY, PROXY),
    ("hop with port", TRUSTED, PROXY, {"HTTP_X_FORWARDED_FOR": "198.51.100.7:4711"}, "198.51.100.7",
     "198.51.100.7"),
    ("IPv6 client grouped by /64", TRUSTED, PROXY, {"HTTP_X_FORWARDED_FOR": "2001:db8:1:2:aaaa::1"},
     "2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("bracketed IPv6 with port", TRUSTED, PROXY, {"HTTP_X_FORWARDED_FOR": "[2001:db8:1:2::9]:443"},
     "2001:db8:1:2::9", "2001:db8:1:2::/64"),
    ("IPv6 hop with a zone id -> REMOTE_ADDR", TRUSTED, PROXY, {"HTTP_X_FORWARDED_FOR": "fe80::1%eth0"}, PROXY,
     PROXY),
    ("IPv4-mapped IPv6 REMOTE_ADDR is IPv4", [], "::ffff:192.0.2.5", {}, "192.0.2.5", "192.0.2.5"),
    ("IPv4-mapped IPv6 hop is IPv4", TRUSTED, PROXY, {"HTTP_X_FORWARDED_FOR": "::ffff:198.51.100.7"},
     "198.51.100.7", "198.51.100.7"),
    ("Forwarded ignored when proxies append XFF", TRUSTED, PROXY,
     {"HTTP_FORWARDED": "for=6.6.6.6", "HTTP_X_FORWARDED_FOR": "198.51.100.7"}, "198.51.100.7", "198.51.100.7"),
    ("XFF ignored when proxies append Forwarded", TRUSTED, PROXY,
     {"HTTP_FORWARDED": "for=198.51.100.7;proto=https", "HTTP_X_FORWARDED_FOR": "6.6.6.6"}, "198.51.100.7",
     "198.51.100.7"),
    ("Forwarded walked from the right, quoted IPv6", TRUSTED, PROXY,
     {"HTTP_FORWARDED": 'for=6.6.6.6, for="[2001:db8:cafe::17]:4711"'}, "2001:db8:cafe::17", "2001:db8:cafe::/64"),
    ("Forwarded obfuscated identifier -> REMOTE_ADDR", TRUSTED, PROXY, {"HTTP_FORWARDED": "for=_hidden"}, PROXY,
     PROXY),
    ("Forwarded 'unknown' -> REMOTE_ADDR", TRUSTED, PROXY, {"HTTP_FORWARDED": "for=unknown"}, PROXY, PROXY),
    ("IPv6 trusted proxy network", TRUSTED, "2001:db8:ffff:1::1", {"HTTP_X_FORWARDED_FOR": "198.51.100.7"},
     "198.51.100.7", "198.51.100.7"),
    ("IPv6 peer outside the trusted /48", TRUSTED, "2001:db8:fffe::1", {"HTTP_X_FORWARDED_FOR": "198.51.100.7"},
     "2001:db8:fffe::1", "2001:db8:fffe::/64"),
    # No usable REMOTE_ADDR (a server on a Unix socket): no address, however wide TRUSTED_PROXIES is ...
    ("empty REMOTE_ADDR, no proxies: no address", [], "", {"HTTP_X_FORWARDED_FOR": "198.51.100.7"}, None, None),
    ("empty REMOTE_ADDR, every network trusted: no address", ["0.0.0.0/0", "::/0"], "",
     {"HTTP_X_FORWARDED_FOR": "198.51.100.7"}, None, None),
    ("REMOTE_ADDR 'unix:', no proxies: no address", [], "unix:", {"HTTP_X_FORWARDED_FOR": "198.51.100.7"}, None,
     None),
    ("REMOTE_ADDR with a zone id: no address", [], "fe80::1%eth0", {}, None, None),
    # ... unless "unix" trusts the peer on the socket: then its header is walked like any trusted proxy's.
    ("unix peer trusted: its appended hop is the client", ["unix"], "", {"HTTP_X_FORWARDED_FOR": "198.51.100.7"},
     "198.51.100.7", "198.51.100.7"),
    ("unix peer trusted, REMOTE_ADDR 'unix:'", ["unix"], "unix:", {"HTTP_X_FORWARDED_FOR": "198.51.100.7"},
     "198.51.100.7", "198.51.100.7"),
    ("unix peer trusted: client-supplied left entries are ignored", ["unix", "10.0.0.0/8"], "",
     {"HTTP_X_FORWARDED_FOR": "6.6.6.6, 198.51.100.7, 10.9.9.9"}, "198.51.100.7", "198.51.100.7"),
    ("unix peer trusted, no header: no address", ["unix"], "", {}, None, None),
    ("unix peer trusted, garbage hop: no address", ["unix"], "", {"HTTP_X_FORWARDED_FOR": "garbage"}, None, None),
    ("unix trusted, TCP peer untrusted: XFF ignored", ["unix"], "203.0.113.9",
     {"HTTP_X_FORWARDED_FOR": "198.51.100.7"}, "203.0.113.9", "203.0.113.9"),
]


@pytest.mark.parametrize(("case", "trusted", "remote", "headers", "ip", "expected"), MATRIX, ids=[m[0] for m in MATRIX])
def test_spoofing_matrix(hotcache_config, case, trusted, remote, headers, ip, expected):
    uses_forwarded = "append Forwarded" in case or (case.startswith("Forwarded ") and "append XFF" not in case)
    header = "forwarded" if uses_forwarded else "x-forwarded-for"
    hotcache_config(TRUSTED_PROXIES=trusted, TRUSTED_PROXY_HEADER=header)
    request = req(remote, **headers)
    addr = client_ip(request)
    assert (None if addr is None else str(addr)) == ip
    assert client_bucket(request) == expected
    assert expected == (None if addr is None else bucket(addr))


def test_client_cannot_pick_its_bucket_with_any_header(hotcache_config):
    hotcache_config(TRUSTED_PROXIES=TRUSTED)
    chosen = set()
    for fake in ("1.1.1.1", "10.0.0.2", "::1", "garbage", "1.1.1.1, 2.2.2.2"):
        chosen.add(client_bucket(req("203.0.113.9", HTTP_X_FORWARDED_FOR=fake, HTTP_FORWARDED=f"for={fake}")))
    assert chosen == {"203.0.113.9"}


def test_ipv4_prefix_groups_addresses(hotcache_config):
    hotcache_config(IPV4_PREFIX=24)
    assert client_bucket(req("192.0.2.77")) == "192.0.2.0/24"


def test_ipv6_prefix_is_configurable(hotcache_config):
    hotcache_config(IPV6_PREFIX=48)
    assert client_bucket(req("2001:db8:1:2::1")) == "2001:db8:1::/48"


def test_unusable_remote_addr_gives_no_bucket():
    assert client_ip(req("")) is None
    assert client_bucket(req("not an ip")) is None


@pytest.mark.parametrize("text", ["", "1.2.3", "1.2.3.4.5", "fe80::1%eth0", "[::1", "x" * 100])
def test_parse_address_rejects_malformed(text):
    assert parse_address(text) is None
