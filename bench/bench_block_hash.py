"""Prefix hashing of one prompt: ferrum_kv block_hashes (C++ SHA-256 chain) against the same chain

The benchmark lives in ferrum_kv.benchmarks.block_hash so that the installed `ferrum-kv bench` runs it too.
"""

from ferrum_kv.benchmarks.block_hash import main

if __name__ == "__main__":
    main()
