"""Operating hotcache on a Redis Cluster: the system checks of REDIS_URL / REDIS_CLUSTER, hotcache_check's view of
every node, and a single-server client pointed at one node of a cluster (the misconfiguration of issue 18)."""

from __future__ import annotations

import io
import json

import pytest
from django.core import checks as django_checks
from django.core.management import CommandError, call_command

from hotcache.checks.foundation import check_foundation
from hotcache.checks.redis_target import check_cluster_mode, check_redis_target
from hotcache.management.commands.hotcache_check import check_connections


def _ids(messages):
    return [m.id for m in messages]


def test_redis_cluster_without_a_url_is_an_error_naming_both_settings(hotcache_config):
    hotcache_config(REDIS_CLUSTER=True)
    [error] = check_redis_target()
    assert error.id == "hotcache.E121"
    assert "HOTCACHE['REDIS_CLUSTER']" in error.msg and "HOTCACHE['REDIS_URL']" in error.msg


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://127.0.0.1:7000/1", "database 1"),
        ("redis://127.0.0.1:7000/0?db=2", "database 2"),
        ("unix:///tmp/redis.sock", "over TCP"),
        ("http://127.0.0.1:7000", "not a Redis scheme"),
    ],
)
def test_a_cluster_url_that_cannot_work_is_an_error(hotcache_config, url, problem):
    hotcache_config(REDIS_URL=url, REDIS_CLUSTER=True)
    [error] = check_redis_target()
    assert error.id == "hotcache.E122"
    assert problem in error.msg and "HOTCACHE['REDIS_URL']" in error.msg


def test_a_single_server_url_may_name_any_database(hotcache_config):
    hotcache_config(REDIS_URL="rediss://user:pw@cache.example.net:6380/3")
    assert check_redis_target() == []


def test_redis_cluster_must_be_a_boolean(hotcache_config):
    hotcache_config(REDIS_URL="redis://127.0.0.1:7000/0", REDIS_CLUSTER="yes")
    assert "hotcache.E120" in _ids(check_redis_target())


def test_the_alias_is_not_required_when_a_url_is_set(hotcache_config):
    hotcache_config(REDIS_ALIAS="nowhere", REDIS_URL="redis://127.0.0.1:7000/0")
    assert not {"hotcache.E002", "hotcache.E003"} & set(_ids(check_foundation()))


def test_the_cluster_mode_check_runs_only_with_deploy():
    assert check_cluster_mode in django_checks.registry.registry.get_checks(include_deployment_checks=True)
    assert check_cluster_mode not in django_checks.registry.registry.get_checks(include_deployment_checks=False)


def test_hotcache_check_names_every_node_its_role_slots_and_round_trip(cluster_redis):
    report = check_connections(samples=2)
    assert report["ok"], report
    state = report["redis"]["cluster"]
    assert report["redis"]["mode"] == "cluster"
    assert (state["masters"], state["replicas"], state["slots_covered"]) == (3, 3, 16384)
    masters = [n for n in state["nodes"] if n["role"] == "master"]
    assert sum(high - low + 1 for n in masters for low, high in n["slots"]) == 16384
    assert {n["master"] for n in state["nodes"] if n["role"] == "replica"} == {n["address"] for n in masters}
    assert all(n["ok"] and n["rtt_ms"] is not None and n["rtt_ms"] >= 0 for n in state["nodes"])
    assert {n["address"] for n in state["nodes"]} == {node.address for node in cluster_redis.nodes}
    out = io.StringIO()
    call_command("hotcache_check", stdout=out)
    text = out.getvalue()
    assert "Cluster  OK   3 masters, 3 replicas, 16384 of 16384 slots served" in text
    for node in cluster_redis.nodes:
        assert node.address in text


def test_hotcache_check_fails_while_a_master_is_down_and_names_it(settings, own_redis_cluster):
    old, replicas = own_redis_cluster.kill_master(slot=0)
    settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_URL": own_redis_cluster.url, "REDIS_CLUSTER": True}
    out = io.StringIO()
    with pytest.raises(CommandError):
        call_command("hotcache_check", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["ok"] is False and report["redis"]["ok"] is False
    assert old.address in report["redis"]["error"]
    # Its replica takes over: every slot is served again, but the dead node is still reported.
    own_redis_cluster.wait_for_promotion(old, replicas)
    report = check_connections(samples=1)
    assert report["redis"]["cluster"]["slots_covered"] == 16384
    assert report["ok"] is False
    assert old.address in report["redis"]["error"]


def test_a_single_server_client_on_a_cluster_node_is_reported_with_the_fix(settings, redis_cluster):
    node_url = f"redis://127.0.0.1:{redis_cluster.nodes[0].port}/0"
    settings.HOTCACHE = {**settings.HOTCACHE, "REDIS_URL": node_url}
    report = check_connections(samples=1)
    assert report["ok"] is False
    assert "cluster_enabled:1" in report["redis"]["error"]
    assert "set HOTCACHE['REDIS_CLUSTER'] = True" in report["redis"]["error"]
    [warning] = check_cluster_mode()
    assert warning.id == "hotcache.W120"
    assert "HOTCACHE['REDIS_CLUSTER'] = True" in warning.msg


def test_a_single_server_that_is_no_cluster_node_passes_the_cluster_mode_check():
    assert check_cluster_mode() == []


def test_the_host_project_reads_redis_cluster_from_the_environment(redis_cluster, tmp_path):
    """REDIS_URL + REDIS_CLUSTER=1 (config/settings/base.py): manage.py hotcache_check reports the cluster."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOTCACHE_", "CELERY_", "DJANGO_"))}
    env.update(
        REDIS_URL=redis_cluster.url,
        REDIS_CLUSTER="1",
        DJANGO_SETTINGS_MODULE="config.settings.demo",
        DJANGO_DB_PATH=str(tmp_path / "db.sqlite3"),
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "hotcache_check", "--json"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["redis"]["mode"] == "cluster"
    assert report["redis"]["cluster"]["masters"] == 3


def test_ratelimit_check_drives_a_rule_on_the_cluster(cluster_redis, hotcache_config):
    hotcache_config(RATELIMIT_RULES=[{"name": "login-burst", "rate": "5/10s", "key": "ip"}])
    out = io.StringIO()
    call_command("ratelimit_check", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert report["ok"] and report["admitted"] == 5 and report["denied"] == 3


def test_ratelimit_check_names_redis_url_when_the_cluster_is_unreachable(settings):
    from tests.support.secantus import free_port

    settings.HOTCACHE = {
        **settings.HOTCACHE,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "REDIS_CLUSTER": True,
    }
    with pytest.raises(CommandError, match=r"unreachable.*HOTCACHE\['REDIS_URL'\]"):
        call_command("ratelimit_check", "--rate", "3/m", stdout=io.StringIO())


@pytest.mark.parametrize("value", [0, 1025, "64", 2.5, True])
def test_a_bucket_count_out_of_range_is_an_error(hotcache_config, value):
    hotcache_config(KEY_BUCKETS=value)
    assert "hotcache.E128" in _ids(check_redis_target())


@pytest.mark.parametrize("value", [None, 1, 64, 1024])
def test_a_bucket_count_in_range_passes(hotcache_config, value):
    hotcache_config(KEY_BUCKETS=value)
    assert "hotcache.E128" not in _ids(check_redis_target())


def test_a_celery_broker_on_the_cluster_is_a_warning_naming_the_fix(settings, hotcache_config):
    from hotcache.checks.redis_target import check_celery_broker_on_cluster

    hotcache_config(REDIS_URL="redis://10.0.0.5:7000/0", REDIS_CLUSTER=True)
    settings.CELERY_BROKER_URL = "redis://:secret@10.0.0.5:7000/0"
    [warning] = check_celery_broker_on_cluster()
    assert warning.id == "hotcache.W121"
    assert "MOVED" in warning.msg and "secret" not in warning.msg
    assert "plain Redis" in warning.hint and "RabbitMQ" in warning.hint
    settings.CELERY_BROKER_URL = "redis://10.0.0.9:6379/0"  # a Redis of its own
    assert check_celery_broker_on_cluster() == []
    settings.CELERY_BROKER_URL = "amqp://guest@rabbit//"
    assert check_celery_broker_on_cluster() == []
    hotcache_config(REDIS_URL="redis://10.0.0.5:7000/0", REDIS_CLUSTER=False)  # one server: W100's business
    settings.CELERY_BROKER_URL = "redis://10.0.0.5:7000/0"
    assert check_celery_broker_on_cluster() == []
    hotcache_config(REDIS_URL="redis://10.0.0.5:7000/0", REDIS_CLUSTER=True)
    assert "hotcache.W121" in _ids(django_checks.run_checks())  # registered with Django's checks


def test_the_overview_shows_memory_and_commands_per_master_and_summed(settings, redis_cluster, monkeypatch, key_prefix):
    """INFO is refused in a cluster pipeline and answers for one node: the overview asks every master (one round
    trip each) and sums; a master that does not answer is named, its gate shown, the others still counted."""
    from hotcache.backends import redis as redis_backend
    from hotcache.backends.health import redis_gate
    from hotcache.reports import overview, status_report
    from tests.support.redis_cluster import ClusterProxies

    proxies = ClusterProxies(redis_cluster)
    proxies.install(monkeypatch)
    # A generous timeout: the proxies are Python threads on a machine the other suites load too.
    hot = {"REDIS_URL": proxies.url, "REDIS_CLUSTER": True, "REDIS_SOCKET_TIMEOUT": 5.0}
    settings.HOTCACHE = {**settings.HOTCACHE, **hot}
    try:
        for i in range(30):
            redis_backend.call("status", lambda r, i=i: r.set(f"{key_prefix}:ov:{i}", 1, ex=60))
        ov = overview()
        assert len(ov.redis_nodes) == 3
        assert all(n.used_memory and n.server_billed and n.gate == "closed" for n in ov.redis_nodes)
        assert ov.memory.value == sum(n.used_memory for n in ov.redis_nodes)
        assert ov.server_commands.billed == sum(n.server_billed for n in ov.redis_nodes)
        assert all(n.commands_sent > 0 for n in ov.redis_nodes)  # this process's SETs reached every master
        text = "\n".join(status_report().lines)
        assert "Redis Cluster masters" in text and all(n.address in text for n in ov.redis_nodes)
        assert json.loads(status_report(as_json=True).lines[0])["redis_nodes"][0]["address"]

        for down in [n.address for n in ov.redis_nodes]:  # the meter's keys live on one of them
            proxies.up()
            redis_gate.reset()  # the client stays: a new one would start from the URL's node, maybe the one down
            proxies.down(int(down.rsplit(":", 1)[1]))
            _one_master_down(overview(), down)
    finally:
        proxies.close()


def _one_master_down(ov, down):
    """Every master listed, the one down without figures and with its gate open; the others still summed."""
    by_address = {n.address: n for n in ov.redis_nodes}
    assert len(by_address) == 3
    assert by_address[down].used_memory is None and by_address[down].gate == "open"
    assert ov.memory.value == sum(n.used_memory or 0 for n in ov.redis_nodes)
    assert down in ov.memory.note
    assert ov.gate.state == "open" and down in ov.gate.name  # the summary names the node


def test_hotcache_check_reads_the_eviction_policy_of_every_master(cluster_redis):
    """Each master has its own maxmemory-policy: one that evicts is named, not hidden behind the others."""
    master = cluster_redis.masters_info()[-1]
    with cluster_redis.node(master.port).client() as c:
        c.config_set("maxmemory-policy", "allkeys-lru")
        try:
            report = check_connections(samples=1)
        finally:
            c.config_set("maxmemory-policy", "noeviction")
    eviction = report["redis"]["eviction"]
    assert not eviction["ok"]
    assert eviction["maxmemory_policy"] == f"allkeys-lru (on {master.address})"
    assert check_connections(samples=1)["redis"]["eviction"]["ok"]
