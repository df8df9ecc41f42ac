"""The test cluster itself: 3 masters and 3 replicas from Debian's redis-server, every slot served, and a killed
master's replica promoted."""

from __future__ import annotations

from tests.support.redis_cluster import MAX_PORT, NODE_TIMEOUT_MS, RedisClusterNodes


def test_the_cluster_has_three_masters_serving_every_slot_and_three_replicas(redis_cluster):
    view = redis_cluster.topology()
    masters = [n for n in view if n.role == "master"]
    replicas = [n for n in view if n.role == "replica"]
    assert len(masters) == 3
    assert len(replicas) == 3
    assert sum(high - low + 1 for m in masters for low, high in m.slots) == 16384
    assert {r.master_id for r in replicas} == {m.node_id for m in masters}
    assert all(n.port + 10_000 <= MAX_PORT + 10_000 and n.port <= MAX_PORT for n in view)
    for node in redis_cluster.nodes:
        assert node.cluster_info()["cluster_state"] == "ok"
        with node.client() as c:
            assert c.config_get("cluster-node-timeout")["cluster-node-timeout"] == str(NODE_TIMEOUT_MS)


def test_a_killed_master_is_replaced_by_its_replica(own_redis_cluster: RedisClusterNodes):
    old, replicas = own_redis_cluster.kill_master(slot=0)
    new = own_redis_cluster.wait_for_promotion(old, replicas)
    assert new in replicas
    assert own_redis_cluster.master_for_slot(0) is new
    assert not old.alive
    own_redis_cluster.restart(old)  # it rejoins from its nodes.conf, as a replica of the promoted node
    view = {n.port: n for n in own_redis_cluster.topology()}
    assert view[old.port].role == "replica"
    assert view[old.port].master_id == view[new.port].node_id
