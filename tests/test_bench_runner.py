"""The benchmark harness (config/demo/bench/runner.py) reports exact per-operation counts beside its latencies:
billed commands as a per-command provider counts them, commands sent and round trips."""

from config.demo.bench.runner import Arm, run_group
from hotcache.backends import redis as redis_backend


def three_in_a_pipeline(i: int) -> None:
    def send(r):
        pipe = r.pipeline(transaction=False)
        for _ in range(3):
            pipe.exists(f"hc-bench-probe-{i}")
        return pipe.execute()

    redis_backend.call("bench", send)


def one_ping(i: int) -> None:
    redis_backend.call("bench", lambda r: r.ping())


def test_each_arm_reports_billed_commands_beside_commands_sent_and_round_trips():
    results = {
        r.name: r
        for r in run_group(
            [
                Arm("pipeline of 3", three_in_a_pipeline),
                Arm("PING", one_ping),
            ],
            rounds=2,
            ops_per_round=5,
            warmup=1,
        )
    }
    piped, ping = results["pipeline of 3"], results["PING"]
    assert (piped.redis_billed_per_op, piped.redis_commands_per_op, piped.redis_round_trips_per_op) == (3, 3, 1)
    assert (ping.redis_billed_per_op, ping.redis_commands_per_op, ping.redis_round_trips_per_op) == (0, 1, 1)
    assert piped.as_dict()["redis_billed_per_op"] == 3
