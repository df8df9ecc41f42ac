"""The session entry's layout is what a later combined read needs: the user's key part, readable by a Lua script
without decoding Django's data, gives the cached user's keys (docs/sessions.md, "The Redis layout and the
combined read"). Proven with the documented script shape on the real Redis."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.test import Client

from hotcache.sessions.entries import entry_key, version_key
from hotcache.users.entries import entry_key as user_entry_key
from hotcache.users.entries import version_key as user_version_key
from tests.support.targets import on_a_cluster

User = get_user_model()

# The shape docs/sessions.md describes (single server: the user keys are derived, not declared in KEYS).
COMBINED = """
local raw = redis.call('GET', KEYS[1])
if not raw then return {false, false, false} end
local u = cjson.decode(string.sub(raw, 66)).u
if type(u) ~= 'string' then return {raw, false, false} end
local tag = ARGV[1] .. ':{users:' .. u .. '}:'
local user = redis.call('MGET', tag .. 'u', tag .. 'v')
return {raw, user[1] or false, user[2] or false}
"""
# On a Redis Cluster a script may touch only its declared keys' node: the same derivation, returning the user's
# keys for the client to read on their node (what hotcache.sessions.combined does there: the user's MGET).
DERIVED = """
local raw = redis.call('GET', KEYS[1])
if not raw then return {false, false} end
local u = cjson.decode(string.sub(raw, 66)).u
if type(u) ~= 'string' then return {raw, false} end
return {raw, ARGV[1] .. ':{users:' .. u .. '}:'}
"""


def test_one_script_can_read_the_session_and_its_cached_user(settings, raw_redis):
    settings.MIDDLEWARE = [
        "hotcache.middleware.CachedAuthenticationMiddleware"
        if m == "django.contrib.auth.middleware.AuthenticationMiddleware"
        else m
        for m in settings.MIDDLEWARE
    ]
    settings.ROOT_URLCONF = "config.demo.urls"
    user = User.objects.create_user("dora", password="pw")
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    assert client.get("/users/me/").status_code == 200  # caches the user
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    prefix = settings.HOTCACHE["KEY_PREFIX"]
    if on_a_cluster():  # the user's keys hash to another slot: derived by the script, read on their own node
        session_raw, tag = raw_redis.eval(DERIVED, 2, entry_key(key), version_key(key), prefix)
        user_raw, user_version = raw_redis.get(tag + b"u"), raw_redis.get(tag + b"v")
    else:
        session_raw, user_raw, user_version = raw_redis.eval(COMBINED, 2, entry_key(key), version_key(key), prefix)
    assert session_raw == raw_redis.get(entry_key(key))
    assert user_raw is not None and user_raw == raw_redis.get(user_entry_key(str(user.pk)))
    assert user_version == raw_redis.get(user_version_key(str(user.pk)))
