"""hotcache.reports' surface: the renamed gauge type, per-feature registration, and the status service."""

import json

import pytest

from hotcache import reports
from hotcache.conf import FEATURES
from tests.reports.fixtures import empty_meter_hashes  # noqa: F401 - autouse


def test_limit_is_a_deprecated_alias_of_gauge():
    with pytest.warns(DeprecationWarning, match="use hotcache.reports.Gauge"):
        from hotcache.reports import Limit
    assert Limit is reports.Gauge
    assert "Limit" not in reports.__all__


def test_every_shipped_feature_derives_its_figures():
    for feature in FEATURES:
        assert reports.feature_summary(feature, days=1).figures, feature


def test_register_figures_refuses_an_unknown_feature():
    with pytest.raises(ValueError, match="unknown feature"):
        reports.register_figures("nope")


def test_status_report_is_what_hotcache_status_prints():
    text = reports.status_report(3)
    assert text.lines[0].startswith("Redis billed commands today") and text.error == ""
    assert len(text.overview.days) == 3
    as_json = reports.status_report(3, as_json=True)
    assert len(as_json.lines) == 1 and json.loads(as_json.lines[0])["exceeded"] == []


def test_status_report_names_an_exceeded_limit(hotcache_config):
    hotcache_config(REDIS_MEMORY_LIMIT=1000)
    report = reports.status_report(1)
    assert report.error.startswith("hotcache limit exceeded: Redis memory") and "REDIS_MEMORY_LIMIT" in report.error
