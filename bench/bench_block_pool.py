"""Batched allocate+free through the Python API: ferrum_kv.BlockPool against a pure-Python pool

The benchmark lives in ferrum_kv.benchmarks.block_pool so that the installed `ferrum-kv bench` runs it too.
"""

from ferrum_kv.benchmarks.block_pool import main

if __name__ == "__main__":
    main()
