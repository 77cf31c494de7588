"""The Redis tier against real redis-server processes that the tests start themselves (a single
server and a 3-node Redis Cluster): sharing between caches and processes, batched round trips,
passwords, and the server failing (killed, restarted, paused, absent at start)."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import ferrum_kv as fkv
from ferrum_kv.tiers import RedisTier
from redis_servers import RedisCluster, RedisServer
from tier_helpers import DTYPES, block_bytes, check_no_pins, compute, config, tokens


def fast_retry(tier):
    tier.backoff_initial = 0.05
    tier.backoff_max = 0.1
    return tier


@pytest.fixture
def server(tmp_path):
    s = RedisServer(tmp_path / "redis").start()
    yield s
    s.stop()


def info(tier, section):
    return tier._connect().info(section)


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_caches_share_blocks_through_redis_bit_exact(server, dtype):
    a = fkv.PagedKvCache(config(dtype), tiers=[RedisTier(server.url)], model_id="m")
    hit, data = compute(a, 1, tokens(27), np.random.default_rng(1))
    a.flush_tiers()
    check_no_pins(a)
    name = f"redis://127.0.0.1:{server.port}"
    assert a.stats()["tiers"][name]["blocks_written"] == 6
    b = fkv.PagedKvCache(config(dtype), tiers=[RedisTier(server.url)], model_id="m")
    assert b.add_sequence(1, tokens(27)) == 24
    assert np.array_equal(block_bytes(b, b.block_table(1)[:6]), data)
    t = b.stats()["tiers"][name]
    assert t["hits"] == 6 and t["errors"] == 0
    b.check_invariants()


def test_lookups_are_batched_round_trips(server):
    a = fkv.PagedKvCache(config(num_blocks=128), tiers=[RedisTier(server.url)], model_id="m")
    compute(a, 1, tokens(161), np.random.default_rng(2))  # 40 full blocks
    a.flush_tiers()
    tier = RedisTier(server.url)
    b = fkv.PagedKvCache(config(num_blocks=128), tiers=[tier], model_id="m")
    before = info(tier, "commandstats")
    assert b.add_sequence(1, tokens(161)) == 160
    after = info(tier, "commandstats")

    def calls(cmd):
        return after.get(f"cmdstat_{cmd}", {}).get("calls", 0) - before.get(
            f"cmdstat_{cmd}", {}).get("calls", 0)

    # 40 EXISTS in one pipeline (one round trip) and 10 MGETs of 4 keys: no per-block GET.
    assert calls("exists") == 40 and calls("mget") == 10 and calls("get") == 0


CHILD = r"""
import sys, numpy as np, ferrum_kv as fkv
from ferrum_kv.tiers import RedisTier
sys.path.insert(0, sys.argv[2])
from tier_helpers import compute, config
cache = fkv.PagedKvCache(config("float32"), tiers=[RedisTier(sys.argv[1])], model_id="x")
hit, data = compute(cache, 1, np.arange(50, 71, dtype=np.int32), np.random.default_rng(3))
cache.flush_tiers()
open(sys.argv[3], "wb").write(data.tobytes())
"""


def test_two_processes_share_blocks_through_redis(server, tmp_path):
    out = tmp_path / "written.bin"
    subprocess.run([sys.executable, "-c", CHILD, server.url, os.path.dirname(__file__), str(out)],
                   check=True, capture_output=True)
    cache = fkv.PagedKvCache(config("float32"), tiers=[RedisTier(server.url)], model_id="x")
    assert cache.add_sequence(1, tokens(21, 50)) == 20
    got = block_bytes(cache, cache.block_table(1)[:5])
    assert got.tobytes() == out.read_bytes()


def test_password_in_the_url(tmp_path):
    s = RedisServer(tmp_path / "auth", None, "--requirepass", "pa55").start()
    try:
        good = f"redis://:pa55@127.0.0.1:{s.port}/2"
        a = fkv.PagedKvCache(config(), tiers=[RedisTier(good)], model_id="m")
        _, data = compute(a, 1, tokens(9), np.random.default_rng(4))
        a.flush_tiers()
        b = fkv.PagedKvCache(config(), tiers=[RedisTier(good)], model_id="m")
        assert b.add_sequence(1, tokens(9)) == 8
        assert np.array_equal(block_bytes(b, b.block_table(1)[:2]), data)
        # A wrong password: every call bypasses the tier, none fails.
        bad = fast_retry(RedisTier(f"redis://:wrong@127.0.0.1:{s.port}/2"))
        c = fkv.PagedKvCache(config(), tiers=[bad], model_id="m")
        assert c.add_sequence(1, tokens(9)) == 0
        compute(c, 2, tokens(9, 300), np.random.default_rng(5))
        c.flush_tiers()
        t = c.stats()["tiers"][bad.name]
        assert t["errors"] >= 1 and t["hits"] == 0 and t["blocks_written"] == 0
        c.free_sequence(1)
        check_no_pins(c)
    finally:
        s.stop()


def wait_until(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_server_killed_mid_run_and_restarted(server):
    tier = fast_retry(RedisTier(server.url, timeout=0.5))
    a = fkv.PagedKvCache(config(), tiers=[tier], model_id="m")
    rng = np.random.default_rng(6)
    compute(a, 1, tokens(13, 0), rng)
    a.flush_tiers()
    server.kill()
    # The cache goes on: writes are skipped, reads bypass the tier, all counted.
    for i in range(2, 6):
        hit, _ = compute(a, i, tokens(13, 100 * i), rng)
        assert hit == 0
        a.flush_tiers()
    assert a.add_sequence(50, tokens(13, 10_000)) == 0
    a.free_sequence(50)
    t = a.stats()["tiers"][tier.name]
    assert t["errors"] >= 1 and t["skipped_writes"] >= 3
    check_no_pins(a)
    server.start()  # same port, empty (no persistence)

    attempts = []

    def written():  # a new prompt each time (one already cached on the device is not rewritten)
        attempts.append(50_000 + 100 * len(attempts))
        compute(a, attempts[-1], tokens(13, attempts[-1]), rng)
        a.flush_tiers()
        return a.stats()["tiers"][tier.name]["blocks_written"] >= 6

    assert wait_until(written)
    b = fkv.PagedKvCache(config(), tiers=[RedisTier(server.url)], model_id="m")
    assert b.add_sequence(1, tokens(13, attempts[-1])) == 12
    check_no_pins(a)


def test_a_cache_built_while_redis_is_down_uses_it_once_it_answers(tmp_path):
    s = RedisServer(tmp_path / "late")  # not started
    tier = fast_retry(RedisTier(s.url, timeout=0.3))
    a = fkv.PagedKvCache(config(), tiers=[tier], model_id="m")
    rng = np.random.default_rng(7)
    compute(a, 1, tokens(9), rng)
    a.flush_tiers()
    assert a.stats()["tiers"][tier.name]["errors"] >= 1
    s.start()
    try:
        attempts = []

        def written():  # a new prompt each time
            attempts.append(900 + 100 * len(attempts))
            compute(a, attempts[-1], tokens(9, attempts[-1]), rng)
            a.flush_tiers()
            return a.stats()["tiers"][tier.name]["blocks_written"] >= 2
        assert wait_until(written)
        check_no_pins(a)
    finally:
        s.stop()


def test_a_stalled_server_times_out_and_is_bypassed(server):
    tier = fast_retry(RedisTier(server.url, timeout=0.2))
    a = fkv.PagedKvCache(config(), tiers=[tier], model_id="m")
    rng = np.random.default_rng(8)
    _, data = compute(a, 1, tokens(9), rng)
    a.flush_tiers()
    server.pause()
    try:
        b_tier = fast_retry(RedisTier(server.url, timeout=0.2))
        b = fkv.PagedKvCache(config(), tiers=[b_tier], model_id="m")
        assert b.add_sequence(1, tokens(9)) == 0  # the probe timed out: computed instead
        assert b.stats()["tiers"][b_tier.name]["errors"] == 1
        b.free_sequence(1)
    finally:
        server.resume()
    assert wait_until(lambda: b.add_sequence(2, tokens(9)) == 8 or b.free_sequence(2))
    assert np.array_equal(block_bytes(b, b.block_table(2)[:2]), data)
    b.check_invariants()


def test_evicted_values_are_misses(tmp_path):
    # A server that keeps only part of the values: the run stops at the first one it evicted.
    value_bytes = 128 + config().bytes_per_block
    blocks = 8000
    assert value_bytes * blocks > 2 * (2 << 20)
    s = RedisServer(tmp_path / "small", None, "--maxmemory", str(2 << 20),
                    "--maxmemory-policy", "allkeys-random").start()
    try:
        cfg = config(num_blocks=blocks + 8)
        a = fkv.PagedKvCache(cfg, tiers=[RedisTier(s.url)], model_id="m",
                             tier_queue_blocks=blocks)
        _, data = compute(a, 1, tokens(4 * blocks + 1), np.random.default_rng(9))
        a.flush_tiers()
        assert a.stats()["tiers"][f"redis://127.0.0.1:{s.port}"]["blocks_written"] == blocks
        b = fkv.PagedKvCache(cfg, tiers=[RedisTier(s.url)], model_id="m")
        hit = b.add_sequence(1, tokens(4 * blocks + 1))
        assert hit < 4 * blocks
        n = hit // 4
        assert np.array_equal(block_bytes(b, b.block_table(1)[:n]), data[:n])
        assert b.stats()["tiers"][f"redis://127.0.0.1:{s.port}"]["bad_values"] == 0
        b.check_invariants()
    finally:
        s.stop()


def test_redis_cluster(tmp_path):
    cluster = RedisCluster(tmp_path / "cluster").start()
    try:
        a = fkv.PagedKvCache(config(), tiers=[RedisTier(cluster.url, cluster=True)],
                             model_id="m")
        _, data = compute(a, 1, tokens(121), np.random.default_rng(10))  # 30 blocks
        a.flush_tiers()
        assert a.stats()["tiers"][f"redis://127.0.0.1:{cluster.nodes[0].port} (cluster)"][
            "blocks_written"] == 30
        # The values are spread over the three masters.
        sizes = [int(subprocess.run(["redis-cli", "-p", str(n.port), "dbsize"],
                                    capture_output=True, text=True).stdout) for n in cluster.nodes]
        assert sum(sizes) == 30 and min(sizes) > 0
        b = fkv.PagedKvCache(config(), tiers=[RedisTier(cluster.url, cluster=True)],
                             model_id="m")
        assert b.add_sequence(1, tokens(121)) == 120
        assert np.array_equal(block_bytes(b, b.block_table(1)[:30]), data)
        b.check_invariants()
    finally:
        cluster.stop()
