"""A deliberate data race in ferrum_kv code, for tests/tsan_python.sh to show that its
ThreadSanitizer setup sees races in the extension: two threads write_kv into the same slots at
once (write_kv takes no lock over the data; the scheduler must not do this). Under the TSan build
it must end with a ThreadSanitizer report; without TSan it prints 'no report'."""

import sys
import threading

import numpy as np

sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
import ferrum_kv as fkv  # noqa: E402

cfg = fkv.CacheConfig(num_layers=1, num_kv_heads=2, head_dim=4, block_size=4, num_blocks=8)
cache = fkv.PagedKvCache(cfg)
cache.add_sequence(1, np.arange(8))
slots = cache.slot_mapping(1, 0, 8)
k = np.ones((8, 2, 4), np.float32)


def writer():
    for _ in range(2000):
        cache.write_kv(0, slots, k, k)


threads = [threading.Thread(target=writer) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("no report")
