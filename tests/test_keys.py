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


def test_the_bucket_count_is_one_on_a_single_server_and_64_on_a_cluster(hotcache_config):
    hotcache_config(KEY_BUCKETS=None, REDIS_CLUSTER=False)
    assert keys.bucket_count() == 1
    hotcache_config(REDIS_CLUSTER=True)
    assert keys.bucket_count() == 64
    hotcache_config(KEY_BUCKETS=16)
    assert keys.bucket_count() == 16


def test_one_bucket_is_the_single_tag_layout():
    assert keys.bucket_tags("workbench", "s", 1) == ("s",)
    assert keys.bucket_of("any id", 1) == 0


def test_bucket_tags_lie_in_even_slot_ranges_as_redis_computes_slots():
    from redis.crc import key_slot

    for count in (3, 16, 64, 256):
        tags = keys.bucket_tags("analytics", "a", count)
        assert len(set(tags)) == count
        for b, tag in enumerate(tags):
            slot = key_slot(f"hc:{{analytics:{tag}}}:h:2026010100".encode())
            assert slot == keys.slot(f"analytics:{tag}")
            assert b * 16384 // count <= slot < (b + 1) * 16384 // count


def test_the_bucket_of_an_item_is_stable_and_even():
    assert keys.bucket_of("session-1", 64) == keys.bucket_of("session-1", 64)  # no salted hash()
    counts = [0] * 64
    for i in range(64_000):
        counts[keys.bucket_of(f"id{i}", 64)] += 1
    assert min(counts) > 800 and max(counts) < 1200
