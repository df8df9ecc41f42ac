"""The foundation's record signing and text boundary (issue 13): a record is trusted only if we signed it."""

from __future__ import annotations

import logging

import pytest

from hotcache import keys, metering, signing
from hotcache.exceptions import InvalidName


def test_sealed_record_round_trips() -> None:
    raw = signing.seal("apikeys.record", "k1", '{"o":"alice"}')
    assert signing.unseal("apikeys.record", "k1", raw.encode()) == '{"o":"alice"}'


@pytest.mark.parametrize(
    "mutate",
    [
        lambda raw: raw.replace("alice", "mallory"),  # a flipped field
        lambda raw: raw[:-3],  # truncated
        lambda raw: raw.split(".", 1)[1],  # signature stripped
        lambda raw: "é" * 64 + "." + raw.split(".", 1)[1],  # non-ASCII signature
        lambda raw: "zz" + raw[2:],  # non-hex signature
        lambda raw: b"\xff\xfe" + raw.encode(),  # not UTF-8
        lambda raw: 12345,  # wrong type
        lambda raw: "",
    ],
)
def test_tampered_record_is_absent_never_an_error(mutate: object) -> None:
    raw = signing.seal("apikeys.record", "k1", '{"o":"alice"}')
    assert signing.unseal("apikeys.record", "k1", mutate(raw)) is None  # type: ignore[operator]


def test_a_record_cannot_be_replayed_under_another_identity_or_kind() -> None:
    raw = signing.seal("apikeys.record", "k1", "{}")
    assert signing.unseal("apikeys.record", "k2", raw) is None
    assert signing.unseal("workbench.state", "k1", raw) is None


def test_secret_key_fallbacks_are_honoured(settings) -> None:
    settings.SECRET_KEY = "old-secret-old-secret-old-secret-old-secret-old-secret"
    raw = signing.seal("users.entry", "7", "{}")
    settings.SECRET_KEY = "new-secret-new-secret-new-secret-new-secret-new-secret"
    assert signing.unseal("users.entry", "7", raw) is None
    settings.SECRET_KEY_FALLBACKS = ["old-secret-old-secret-old-secret-old-secret-old-secret"]
    assert signing.unseal("users.entry", "7", raw) == "{}"


def test_unseal_json_requires_fields_of_the_right_type() -> None:
    good = signing.seal_json("x", "1", {"owner": "a", "limit": 5})
    spec = {"owner": str, "limit": int}
    assert signing.unseal_json("x", "1", good, required=spec) == {"owner": "a", "limit": 5}
    for bad in ({"owner": "a"}, {"owner": "a", "limit": "5"}, {"owner": "a", "limit": True}, [1, 2]):
        assert signing.unseal_json("x", "1", signing.seal_json("x", "1", bad), required=spec) is None
    assert signing.unseal_json("x", "1", signing.seal("x", "1", "{not json"), required=spec) is None


def test_tampered_counts_every_time_and_logs_once_per_key_per_minute(caplog, clock) -> None:
    with caplog.at_level(logging.WARNING, logger="hotcache.signing"):
        for _ in range(3):
            signing.tampered("apikeys", "hc:apikeys:a")
        signing.tampered("apikeys", "hc:apikeys:b")
        clock.advance(61)
        signing.tampered("apikeys", "hc:apikeys:a")
    assert metering.snapshot()["ev:apikeys:tampered"] == 5
    assert [r.getMessage().split()[4] for r in caplog.records] == ["hc:apikeys:a", "hc:apikeys:b", "hc:apikeys:a"]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("/x\ud800", "U+D800"),
        ("a\x00b", "U+0000"),
        ("a\nb", "U+000A"),
        ("a\x7f", "U+007F"),
        ("a\x85", "U+0085"),
        ("x" * 2049, "at most 2048"),
        ("", "must not be empty"),
        (b"/bytes", "must be a string"),
        (None, "must be a string"),
        (["/a"], "must be a string"),
    ],
)
def test_text_boundary_refuses_what_cannot_be_stored(value: object, fragment: str) -> None:
    with pytest.raises(InvalidName, match=fragment.replace("+", r"\+")):
        keys.text(value, what="path", max_length=2048)


def test_text_boundary_keeps_ordinary_unicode() -> None:
    assert keys.text("/caf\u00e9/\u65e5\u672c/\U0001f600", what="path", max_length=64) == "/café/日本/😀"


def test_a_signed_body_nested_too_deep_to_decode_is_absent() -> None:
    raw = signing.seal("x", "1", "[" * 100_000 + "]" * 100_000)
    assert signing.unseal_json("x", "1", raw) is None


def test_signatures_are_djangos_salted_hmac_sha256() -> None:
    """Records sealed before the derived key was cached stay valid: same function, faster."""
    from django.utils.crypto import salted_hmac

    expected = salted_hmac("hotcache.record", "users.entry\n7\n{}", algorithm="sha256").hexdigest()
    assert signing.signature("users.entry", "7", "{}") == expected
    other = salted_hmac("hotcache.record", "a\nb\nc", secret="s" * 50, algorithm="sha256").hexdigest()
    assert signing.signature("a", "b", "c", secret="s" * 50) == other
