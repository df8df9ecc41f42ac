import pytest

from hotcache.checks import check_mfa


def ids():
    return sorted(m.id for m in check_mfa())


def test_default_mfa_settings_pass():
    assert ids() == []


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"MFA_DIGITS": 4}, "hotcache.E030"),
        ({"MFA_DIGITS": 12}, "hotcache.E030"),
        ({"MFA_MAX_ATTEMPTS": 50}, "hotcache.E031"),
        ({"MFA_CODE_TTL": 86400}, "hotcache.E032"),
        ({"MFA_USER_FAILURE_LIMIT": 3}, "hotcache.W030"),
        ({"MFA_CODE_TTL": "300"}, "hotcache.E004"),
        ({"MFA_RESEND_COOLDOWN": -1}, "hotcache.E004"),
    ],
)
def test_bad_mfa_settings_are_reported_naming_the_setting(hotcache_config, values, expected):
    hotcache_config(**values)
    messages = [m for m in check_mfa() if m.id == expected]
    assert len(messages) == 1
    assert next(iter(values)) in messages[0].msg and messages[0].hint


def test_zero_resend_cooldown_is_allowed(hotcache_config):
    hotcache_config(MFA_RESEND_COOLDOWN=0)
    assert ids() == []


def test_checks_skip_a_disabled_feature(hotcache_config):
    hotcache_config(FEATURES=["ratelimit"], MFA_DIGITS=2)
    assert ids() == []
