"""MFA codes under hostile input and a tampered Redis: a documented error or a refusal, never another
exception, and never a value an attacker wrote.

Hostile user ids, purposes and codes go through mfa.issue / mfa.verify with Redis up and down (the MongoDB
fallback), and through the demo's HTTP views. Tampered records are edited with ``raw_redis``: the code record
(flipped, swapped between users and purposes, truncated, replayed, of the wrong type), the counters, the
cooldown and the outage marker. A record a process trusts is signed; what the scripts read is sanity-checked.
"""

from __future__ import annotations

import pytest
from django.test import Client

from hotcache import keys, metering, mfa, signing
from hotcache.backends import mongo
from hotcache.conf import hotcache_settings
from hotcache.exceptions import InvalidName
from hotcache.mfa import Reason, _fallback, _hot, _marker
from hotcache.testing import count_redis, new_process
from tests.mfa.support import wrong
from tests.support.targets import warm_every_master


@pytest.fixture(params=["redis", "mongodb"])
def store(request, clock):
    """Where issue and verify run: the real Redis, or the MongoDB fallback (Redis refuses connections)."""
    if request.param == "mongodb":
        request.getfixturevalue("redis_down")
    return request.param


def fullwidth(text):
    """The same text in fullwidth forms (U+FF21...): what NFKC would fold to ASCII; hotcache does not."""
    return "".join(chr(ord(c) + 0xFEE0) for c in text)


def shown(value):
    """A test id for any value (repr() refuses ints of more than 4300 digits)."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<{value.bit_length()} bits>"
    return f"{type(value).__name__}:{text[:20]}"


def code_key(user="alice", purpose="login"):
    return keys.tagged("mfa", user, purpose, "code")


def failures(raw_redis, user="alice", purpose="login"):
    """The user's failures in the current window: field f of the code hash (0 when none)."""
    return int(raw_redis.hget(code_key(user, purpose), "f") or 0)


def no_record(raw_redis, user="alice", purpose="login"):
    """The code record's fields are gone (the hash may live on for the user's cooldown and windows)."""
    return not any(raw_redis.hmget(code_key(user, purpose), "d", "a", "iat", "st", "s"))


def tampered():
    return metering.snapshot()["ev:mfa:tampered"]


def everything(raw_redis, key_prefix):
    """Every mfa key and value in Redis and every mfa_codes document: what 'the store is unchanged' compares."""
    found = {}
    for key in [*raw_redis.scan_iter(match=f"{key_prefix}:{{mfa:*", count=1000), _marker.marker_key().encode()]:
        kind = raw_redis.type(key)
        found[key] = raw_redis.hgetall(key) if kind == b"hash" else raw_redis.get(key) if kind == b"string" else kind
    docs = mongo._current().client[mongo.database_name()][mfa.COLLECTION].find()
    found["mongodb"] = sorted((repr(d) for d in docs), key=str)
    return found


# --- hostile user ids and purposes ---------------------------------------------------------------

HOSTILE_USERS = [
    None,
    True,
    1.5,
    float("nan"),
    b"alice",
    bytearray(b"alice"),
    ["alice"],
    {"user": "alice"},
    object(),
    "",
    " ",
    "alice ",
    "\talice",
    "a\x00b",
    "\x00",
    "a\nb",
    "a\r\nX-Injected: 1",
    "a\x7f",
    "\ud800",
    "alice\udfff",
    "x" * 129,
    "x" * 1_000_000,
    10**200,
    10**5000,
    "١٢٣",
    fullwidth("alice"),
    "alicé",
    "a|b",
    "{alice}",
    "a*",
    "a b",
    '{"$gt": ""}',
]


@pytest.mark.parametrize("user", HOSTILE_USERS, ids=shown)
def test_hostile_user_ids_are_invalid_names_and_change_nothing(user, store, raw_redis, key_prefix):
    before = everything(raw_redis, key_prefix)
    with count_redis() as counted:
        with pytest.raises(InvalidName, match="user_id"):
            mfa.issue(user)
        with pytest.raises(InvalidName, match="user_id"):
            mfa.verify(user, "123456")
    assert counted.commands == 0 and counted.mongo_ops == 0
    assert everything(raw_redis, key_prefix) == before


HOSTILE_PURPOSES = [
    None,
    1,
    b"login",
    "",
    " ",
    "log in",
    "login\x00",
    "\ud800",
    "x" * 33,
    "a:b",
    "a|b",
    fullwidth("login"),
]


@pytest.mark.parametrize("purpose", HOSTILE_PURPOSES, ids=shown)
def test_hostile_purposes_are_invalid_names_and_change_nothing(purpose, store, raw_redis, key_prefix):
    before = everything(raw_redis, key_prefix)
    with pytest.raises(InvalidName, match="purpose"):
        mfa.issue("alice", purpose=purpose)
    with pytest.raises(InvalidName, match="purpose"):
        mfa.verify("alice", "123456", purpose=purpose)
    assert everything(raw_redis, key_prefix) == before


def test_odd_but_valid_user_ids_are_their_own_users(store):
    for user in (42, -42, "a:b", "a.b@example.com", "x" * 128):
        code = mfa.issue(user)
        assert mfa.verify(str(user), code)


# --- hostile codes -------------------------------------------------------------------------------

ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
PERSIAN = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
FULLWIDTH = str.maketrans("0123456789", fullwidth("0123456789"))
DEVANAGARI = str.maketrans("0123456789", "०१२३४५६७८९")
SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")  # str.isdigit() accepts these too

HOSTILE_CODES = {
    "None": lambda c: None,
    "int": lambda c: int(c),
    "bytes": lambda c: c.encode(),
    "list": lambda c: [c],
    "float": lambda c: float(c),
    "arabic-indic digits": lambda c: c.translate(ARABIC),
    "persian digits": lambda c: c.translate(PERSIAN),
    "fullwidth digits": lambda c: c.translate(FULLWIDTH),
    "devanagari digits": lambda c: c.translate(DEVANAGARI),
    "superscript digits": lambda c: c.translate(SUPERSCRIPT),
    "one arabic digit": lambda c: c[:-1] + c[-1].translate(ARABIC),
    "NUL inside": lambda c: c[:3] + "\x00" + c[3:],
    "NUL after": lambda c: c + "\x00",
    "lone surrogate": lambda c: c + "\ud800",
    "control char": lambda c: c[:3] + "\x07" + c[3:],
    "too short": lambda c: c[:-1],
    "too long": lambda c: c + "0",
    "signed": lambda c: "+" + c[1:],
    "negative": lambda c: "-" + c[1:],
    "exponent": lambda c: c[:4] + "e1",
    "hex": lambda c: "0x" + c[2:],
    "decimal point": lambda c: c[:5] + ".",
    "underscore": lambda c: c[:3] + "_" + c[3:],
    "huge": lambda c: c * 200_000,
    "huge whitespace": lambda c: " " * 1_000_000 + c,
    "empty": lambda c: "",
    "only spaces": lambda c: "      ",
    "sql": lambda c: "' OR 1=1 --",
    "json": lambda c: '{"$ne": ""}',
}


@pytest.mark.parametrize("make", list(HOSTILE_CODES), ids=list(HOSTILE_CODES))
def test_hostile_codes_are_invalid_without_touching_a_store(make, store, raw_redis, key_prefix):
    code = mfa.issue("alice")
    before = everything(raw_redis, key_prefix)
    with count_redis() as counted:
        result = mfa.verify("alice", HOSTILE_CODES[make](code))
    assert not result and result.reason is Reason.INVALID and result.store == "none"
    assert counted.commands == 0 and counted.mongo_ops == 0
    assert everything(raw_redis, key_prefix) == before
    assert mfa.verify("alice", wrong(code)).attempts_left == 4  # no attempt was counted
    assert mfa.verify("alice", code)


def test_whitespace_typed_around_and_inside_a_code_is_ignored(store):
    code = mfa.issue("alice")
    assert mfa.verify("alice", f"\u2003{code[:3]}\t{code[3:]}\n")


# --- the same through HTTP (the demo's views) ----------------------------------------------------


@pytest.fixture
def http(settings):
    settings.ROOT_URLCONF = "config.demo.urls"
    return Client(raise_request_exception=False)


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch", "options", "head", "BREW", "PROPFIND"])
def test_odd_methods_are_refused(method, http, store, raw_redis, key_prefix):
    before = everything(raw_redis, key_prefix)
    for path in ("/mfa/issue/", "/mfa/verify/"):
        response = http.generic(
            method.upper(), path, "user=alice&code=123456", content_type="application/x-www-form-urlencoded"
        )
        assert response.status_code == 405
    assert everything(raw_redis, key_prefix) == before


@pytest.mark.parametrize(
    "user",
    ["", "a b", "a%00b", "%ED%A0%80", "%FF%FE", "a%0D%0AX:1", "x" * 200, "x" * 2_000_000, "%D9%A1%D9%A2", "{tag}"],
    ids=shown,
)
def test_hostile_user_over_http_is_a_400_naming_the_field(user, http, store, raw_redis, key_prefix):
    """The body is sent as bytes: %ED%A0%80 is a lone surrogate encoded as UTF-8, %D9%A1%D9%A2 is "١٢"."""
    before = everything(raw_redis, key_prefix)
    for path in ("/mfa/issue/", "/mfa/verify/"):
        body = f"user={user}&code=123456".encode()
        response = http.generic("POST", path, body, content_type="application/x-www-form-urlencoded")
        assert response.status_code == 400 and "user_id" in response.json()["error"]
    assert everything(raw_redis, key_prefix) == before


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("[" * 100_000 + "]" * 100_000, "application/json"),
        (b"\xff\xfe\x00", "application/x-www-form-urlencoded"),
        (b"user=alice&user=&code=1", "application/x-www-form-urlencoded"),  # the last value counts
        (b"x" * 3_000_000, "application/octet-stream"),
    ],
    ids=["deep-json", "not-utf8", "repeated-fields", "huge"],
)
def test_hostile_bodies_over_http_are_refused(body, content_type, http, store):
    for path in ("/mfa/issue/", "/mfa/verify/"):
        response = http.generic("POST", path, body, content_type=content_type)
        assert response.status_code in (400, 401)


def test_unicode_digits_over_http_are_an_invalid_code(http, store):
    code = mfa.issue("alice")
    response = http.post("/mfa/verify/", {"user": "alice", "code": code.translate(ARABIC)})
    assert response.status_code == 401 and response.json()["reason"] == "invalid"
    assert http.post("/mfa/verify/", {"user": "alice", "code": code}).status_code == 200


# --- a tampered code record ----------------------------------------------------------------------


_RECORD = (b"d", b"a", b"iat", b"st", b"s")


def issued(raw_redis, user="alice", purpose="login"):
    """A new code and its record (the code fields of the user's hash)."""
    code = mfa.issue(user, purpose=purpose)
    return code, {f: v for f, v in raw_redis.hgetall(code_key(user, purpose)).items() if f in _RECORD}


def test_records_carry_a_signature_of_digest_and_issue_time(raw_redis):
    _, record = issued(raw_redis)
    assert set(record) == set(_RECORD)
    assert signing.verify(
        "mfa.code", "login|alice", f"{record[b'd'].decode()}|{record[b'iat'].decode()}", record[b"s"].decode()
    )


def test_records_swapped_between_users_never_verify(raw_redis):
    alice_code, alice = issued(raw_redis, "alice")
    bob_code, bob = issued(raw_redis, "bob")
    raw_redis.hset(code_key("alice"), mapping=bob)
    raw_redis.hset(code_key("bob"), mapping=alice)
    for user, code in (("alice", alice_code), ("alice", bob_code), ("bob", bob_code), ("bob", alice_code)):
        result = mfa.verify(user, code)
        assert not result and result.reason is Reason.EXPIRED_OR_MISSING
    assert tampered() == 2  # each swapped record once; then deleted
    assert no_record(raw_redis, "alice") and no_record(raw_redis, "bob")


def test_records_swapped_between_purposes_never_verify(raw_redis, clock):
    login_code, _ = issued(raw_redis, purpose="login")
    reset_code, reset = issued(raw_redis, purpose="reset")
    raw_redis.hset(code_key(purpose="login"), mapping=reset)
    assert not mfa.verify("alice", reset_code, purpose="login")
    assert not mfa.verify("alice", login_code, purpose="login")
    assert mfa.verify("alice", reset_code, purpose="reset")  # the untouched record still works
    assert tampered() == 1


def test_a_record_forged_with_the_right_digest_but_no_valid_signature_is_refused(raw_redis, clock):
    """Even a Redis writer who could compute digests cannot choose a record's issue time: it is signed."""
    code, record = issued(raw_redis)
    raw_redis.hset(code_key(), "iat", int(record[b"iat"]) - 10_000)  # the issue time a forger would move
    result = mfa.verify("alice", code)
    assert not result and result.reason is Reason.EXPIRED_OR_MISSING
    assert tampered() == 1 and no_record(raw_redis)


def test_a_consumed_record_restored_after_its_ttl_is_refused(raw_redis, clock):
    code, record = issued(raw_redis)
    assert mfa.verify("alice", code)
    clock.advance(hotcache_settings.MFA_CODE_TTL + 61)
    raw_redis.delete(code_key())
    raw_redis.hset(code_key(), mapping=record)  # the genuine live record, replayed, with no TTL
    result = mfa.verify("alice", code)
    assert not result and result.reason is Reason.EXPIRED_OR_MISSING
    # The script ends a record past its issue time + MFA_CODE_TTL by itself (the hash outlives the code for
    # the user's windows, so an expired record is no sign of tampering) and removes it.
    assert no_record(raw_redis)


def test_a_wrong_guess_against_a_forged_record_gives_back_the_failure_it_cost(raw_redis):
    code, _ = issued(raw_redis)
    mfa.verify("alice", wrong(code))  # one genuine failure
    raw_redis.hset(code_key(), "s", "0" * 64)
    result = mfa.verify("alice", wrong(code))
    assert not result and result.reason is Reason.EXPIRED_OR_MISSING and result.attempts_left is None
    assert failures(raw_redis) == 1  # only the genuine failure counts
    assert no_record(raw_redis)


RECORD_TAMPERING = {
    "digest flipped": lambda r, rec: r.hset(code_key(), "d", "0" * 64),
    "signature flipped": lambda r, rec: r.hset(code_key(), "s", "f" * 64),
    "signature truncated": lambda r, rec: r.hset(code_key(), "s", rec[b"s"][:10]),
    "signature non-ASCII": lambda r, rec: r.hset(code_key(), "s", "é" * 64),
    "signature not UTF-8": lambda r, rec: r.hset(code_key(), "s", b"\xff" * 64),
    "signature removed": lambda r, rec: r.hdel(code_key(), "s"),
    "digest removed": lambda r, rec: r.hdel(code_key(), "d"),
    "issue time not a number": lambda r, rec: r.hset(code_key(), "iat", "soon"),
    "issue time float": lambda r, rec: r.hset(code_key(), "iat", "1.5"),
    "issue time non-ASCII digits": lambda r, rec: r.hset(code_key(), "iat", "١٢٣"),
    "issue time removed": lambda r, rec: r.hdel(code_key(), "iat"),
    "attempts negative": lambda r, rec: r.hset(code_key(), "a", -1_000_000),
    "attempts not a number": lambda r, rec: r.hset(code_key(), "a", "many"),
    "attempts removed": lambda r, rec: r.hdel(code_key(), "a"),
    "state unknown": lambda r, rec: r.hset(code_key(), "st", "admin"),
    "a string": lambda r, rec: (r.delete(code_key()), r.set(code_key(), rec[b"d"])),
    "a list": lambda r, rec: (r.delete(code_key()), r.rpush(code_key(), rec[b"d"])),
    "a set": lambda r, rec: (r.delete(code_key()), r.sadd(code_key(), rec[b"d"])),
    "empty digest": lambda r, rec: r.hset(code_key(), "d", ""),
}


@pytest.mark.parametrize("tamper", list(RECORD_TAMPERING), ids=list(RECORD_TAMPERING))
def test_a_tampered_code_record_is_absent_counted_and_removed(tamper, raw_redis):
    code, record = issued(raw_redis)
    RECORD_TAMPERING[tamper](raw_redis, record)
    for guess in (wrong(code), code):
        result = mfa.verify("alice", guess)
        assert not result and result.reason is Reason.EXPIRED_OR_MISSING and result.attempts_left is None
    assert tampered() == 1  # met once, then deleted
    assert no_record(raw_redis)
    assert failures(raw_redis) == 0  # the forged record cost the user nothing


def test_residual_a_redis_writer_can_roll_a_record_back_within_its_ttl_only(raw_redis, clock):
    """The documented limit: any earlier state of a genuine record can be written back (a writer can read it
    first), so a code the writer knows can be used again until the record's TTL; never after it."""
    code, live = issued(raw_redis)
    assert mfa.verify("alice", code)
    raw_redis.hset(code_key(), mapping=live)  # rolled back to live
    assert mfa.verify("alice", code)
    clock.advance(hotcache_settings.MFA_CODE_TTL + 61)
    raw_redis.hset(code_key(), mapping=live)
    raw_redis.persist(code_key())
    assert mfa.verify("alice", code).reason is Reason.EXPIRED_OR_MISSING
    assert no_record(raw_redis)


# --- tampered counters and cooldown --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "window_end"),
    [
        (b"lots", None),
        (b"-1000000", None),
        (b"1.5", None),
        (b"\xff\xfe", None),
        (b"9" * 30, None),
        ("\u0661".encode(), None),
        (b"1", b"soon"),
        (b"1", b"-5"),
        (b"1", b"\xff"),
    ],
    ids=[
        "word",
        "negative",
        "float",
        "not-utf8",
        "huge",
        "arabic",
        "window-word",
        "window-negative",
        "window-not-utf8",
    ],
)
def test_a_tampered_failure_count_never_fails_a_verify_or_extends_the_window(value, window_end, raw_redis):
    code = mfa.issue("alice")
    raw_redis.hset(code_key(), "f", value)
    if window_end is not None:
        raw_redis.hset(code_key(), "fw", window_end)
    result = mfa.verify("alice", wrong(code))
    assert result.reason is Reason.INVALID and result.attempts_left == 4
    assert tampered() == 1
    assert failures(raw_redis) == 1 and raw_redis.pttl(code_key()) > 0
    assert mfa.verify("alice", code)


@pytest.mark.parametrize("far", [False, True], ids=["no-window", "window-far-away"])
def test_a_capped_failure_count_without_a_window_blocks_for_one_window_at_most(far, raw_redis, clock):
    code = mfa.issue("alice")
    raw_redis.hset(code_key(), "f", 10)  # at the cap and no window end: "forever" if trusted
    if far:
        raw_redis.hset(code_key(), "fw", int(clock.time() * 1000) + 10**12)
    result = mfa.verify("alice", code)
    assert result.reason is Reason.TOO_MANY_ATTEMPTS and 0 < result.retry_after <= 900
    assert 0 < int(raw_redis.hget(code_key(), "fw")) - clock.time() * 1000 <= 900_000
    clock.advance(900)
    assert mfa.verify("alice", mfa.issue("alice"))


@pytest.mark.parametrize("field", ["c", "n", "nw"])
@pytest.mark.parametrize("value", [b"many", b"-5", b"\xff", b"9" * 30], ids=["word", "negative", "not-utf8", "huge"])
def test_a_tampered_send_count_or_cooldown_never_fails_an_issue(field, value, raw_redis, clock):
    raw_redis.hset(code_key(), field, value)
    raw_redis.pexpire(code_key(), 60_000)
    code = mfa.issue("alice")
    assert mfa.verify("alice", code)
    assert tampered() == 1
    assert raw_redis.hget(code_key(), "n") == b"1" and 0 < raw_redis.pttl(code_key()) <= 3_600_000


def test_a_cooldown_or_cap_stretched_from_outside_never_blocks_longer_than_its_setting(raw_redis, clock):
    now = int(clock.time() * 1000)
    raw_redis.hset(code_key(), "c", now + 10**12)
    with pytest.raises(mfa.ResendTooSoon) as exc:
        mfa.issue("alice")
    assert exc.value.reason == "cooldown" and exc.value.retry_after <= 30
    clock.advance(30)
    raw_redis.hset(code_key(), mapping={"n": 5, "nw": now + 10**12})  # at the hourly cap, for ever if trusted
    with pytest.raises(mfa.ResendTooSoon) as exc:
        mfa.issue("alice")
    assert exc.value.reason == "hourly_cap" and exc.value.retry_after <= 3600
    clock.advance(3600)
    assert mfa.issue("alice")


# --- a tampered outage marker --------------------------------------------------------------------


def forged_marker(clock, *, days=365):
    return f"{'ab' * 32}.{int((clock.time() + days * 86400) * 1000)}"


@pytest.mark.parametrize(
    "value",
    ["forged-future", "plain-int", "garbage", "not-utf8", "hash", "empty"],
)
def test_a_tampered_marker_sends_no_miss_to_mongodb(value, raw_redis, clock):
    raw = {
        "forged-future": forged_marker(clock),
        "plain-int": str(int((clock.time() + 86400) * 1000)),  # the format before records were signed
        "garbage": "soon",
        "not-utf8": b"\xff\xfe",
        "empty": "",
    }
    for marker in _marker.marker_keys():  # the one key; on a cluster every copy (a verify reads the one near it)
        if value == "hash":
            raw_redis.hset(marker, "t", 1)
        else:
            raw_redis.set(marker, raw[value])
    code = mfa.issue("alice")
    _fallback.collection()
    warm_every_master(_hot.VERIFY)  # cached, as on a long-running server
    with count_redis() as counted:
        result = mfa.verify("alice", wrong(code))
    assert result.reason is Reason.INVALID and result.attempts_left == 4
    assert (counted.round_trips, counted.mongo_ops) == (1, 0)  # the forged "outage" is not believed
    assert tampered() == 1
    assert mfa.verify("alice", code)


def test_publishing_after_an_outage_overwrites_a_forged_marker(raw_redis, redis_proxy, clock):
    redis_proxy.down()
    code = mfa.issue("alice")  # issued on MongoDB: this process owes the marker
    redis_proxy.up()
    clock.advance(hotcache_settings.HEALTH_COOLDOWN)
    copies = _marker.marker_keys()  # the one key; on a cluster its copies, each published to
    for copy in copies:
        raw_redis.set(copy, forged_marker(clock))  # larger than any genuine T: MARK keeps it...
    mfa.issue("bob")  # ...and Python, which cannot trust it, overwrites it with its own
    expected = int(clock.time() * 1000) + hotcache_settings.MFA_CODE_TTL * 1000
    for copy in copies:
        assert int(signing.unseal("mfa.marker", "mongo_live_until", raw_redis.get(copy))) == expected
    assert tampered() == len(copies)  # each forged copy seen
    new_process()  # another process, which knows only the marker
    assert mfa.verify("alice", code).store == "mongodb"


# --- the MongoDB fallback obeys the same bounds as Redis -----------------------------------------


def test_both_stores_enforce_the_same_bounds_under_non_default_settings(store, clock, raw_redis, hotcache_config):
    """One script of issues, guesses and waits gives the same outcomes on Redis and on the MongoDB fallback."""
    hotcache_config(
        MFA_CODE_TTL=60,
        MFA_MAX_ATTEMPTS=3,
        MFA_USER_FAILURE_LIMIT=4,
        MFA_USER_FAILURE_WINDOW=120,
        MFA_RESEND_COOLDOWN=10,
        MFA_HOURLY_SEND_CAP=3,
    )

    def advance(seconds):
        clock.advance(seconds)
        if store != "redis":
            return
        for name in ("code", "cool", "sends", "fails"):  # server-side TTLs run down too
            key = keys.tagged("mfa", "alice", "login", name)
            left = raw_redis.pttl(key)
            if 0 < left <= seconds * 1000:
                raw_redis.delete(key)
            elif left > 0:
                raw_redis.pexpire(key, left - seconds * 1000)

    outcomes = []

    def issue():
        try:
            outcomes.append(("issued", len(mfa.issue("alice"))))
        except mfa.ResendTooSoon as exc:
            outcomes.append((exc.reason, exc.retry_after))

    def guess(code):
        r = mfa.verify("alice", code)
        outcomes.append((r.reason.value, r.attempts_left, r.retry_after))

    issue()
    issue()  # inside the 10 s cooldown
    advance(11)
    issue()
    advance(61)
    issue()  # the third send this hour
    advance(11)
    issue()  # over the hourly cap of 3
    advance(3600)  # a new hour
    issue()
    advance(11)
    live = mfa.issue("alice")
    for _ in range(3):  # MFA_MAX_ATTEMPTS: the third wrong guess burns the code
        guess(wrong(live))
    guess(live)
    advance(11)
    live = mfa.issue("alice")
    guess(wrong(live))  # the fourth failure in the window (which began 11 s ago): the user is capped
    guess(live)
    advance(121)
    guess(live)  # window over, but the code (60 s) has expired
    assert outcomes == [
        ("issued", 6),
        ("cooldown", 10),
        ("issued", 6),
        ("issued", 6),
        ("hourly_cap", 3600 - 11 - 61 - 11),
        ("issued", 6),
        ("invalid", 2, None),
        ("invalid", 1, None),
        ("too_many_attempts", None, None),
        ("too_many_attempts", None, None),
        ("invalid", 2, None),
        ("too_many_attempts", None, 120 - 11),
        ("expired_or_missing", None, None),
    ]
