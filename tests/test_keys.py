import pytest

from hotcache import keys
from hotcache.exceptions import InvalidName


def test_safe_parts_are_kept_verbatim(key_prefix):
    assert keys.build("ratelimit", "login", "10.0.0.1") == f"{key_prefix}:ratelimit:login:10.0.0.1"


@pytest.mark.parametrize(
    "hostile",
    ["a:b", "x}{y", "*", "user\nDEL x", "ä", "", "a" * 65, "~" + "0" * 32, "{tag}", "a b"],
)
def test_unsafe_parts_cannot_add_separators_or_tags(hostile):
    key = keys.build("mfa", hostile)
    tail = key.split(":")[-1]
    assert tail.startswith("~") and len(tail) == 33
    assert key.count(":") == 2 and "{" not in key and "*" not in key and "\n" not in key


def test_distinct_inputs_give_distinct_keys():
    inputs = ["a:b", "a_b", "a:b ", "A:b", "~a", "a"]
    assert len({keys.build("x", i) for i in inputs}) == len(inputs)


def test_tagged_keys_share_one_hash_tag(key_prefix):
    a = keys.tagged("ratelimit", "1.2.3.4", "cur")
    b = keys.tagged("ratelimit", "1.2.3.4", "prev")
    tag = a[a.index("{") : a.index("}") + 1]
    assert tag == "{ratelimit:1.2.3.4}" and b.startswith(f"{key_prefix}:{tag}")


def test_feature_names_are_checked():
    with pytest.raises(ValueError, match="feature name"):
        keys.build("Bad:Feature", "x")


def test_validate_name_says_what_is_wrong():
    assert keys.validate_name("login", what="purpose") == "login"
    with pytest.raises(InvalidName, match="purpose"):
        keys.validate_name("log in", what="purpose")
    with pytest.raises(InvalidName, match="must be a string"):
        keys.validate_name(3, what="purpose")
