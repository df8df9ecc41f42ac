"""``hotcache_bench --cluster``: every selected group runs a second time with hotcache on a Redis Cluster, its
arms reported beside the single server's with their exact billed commands and round trips."""

import json

from django.core.management import call_command


def test_the_bench_runs_each_group_on_the_cluster_beside_the_single_server(redis_url, redis_cluster, capsys):
    call_command(
        "hotcache_bench",
        "foundation",
        "apikeys",
        "--redis-url",
        redis_url,
        "--cluster",
        redis_cluster.url,
        "--rounds",
        "1",
        "--ops",
        "5",
        "--json",
    )
    report = json.loads(capsys.readouterr().out)
    single = {a["name"]: a for a in report["apikeys: protected view, one call"]}
    cluster = {a["name"]: a for a in report["apikeys: protected view, one call [cluster]"]}
    assert set(cluster) == set(single)
    arm = "hotcache apikeys.check() alone"
    # The same script on either target: one round trip and the same billed commands per warm check.
    assert cluster[arm]["redis_round_trips_per_op"] == single[arm]["redis_round_trips_per_op"] == 1
    assert cluster[arm]["redis_billed_per_op"] == single[arm]["redis_billed_per_op"] > 0
    assert report["foundation: one PING [cluster]"][0]["redis_round_trips_per_op"] == 1
