"""Paged-attention decode and prefill against NumPy and PyTorch SDPA, with % of a read ceiling.

The benchmark lives in ferrum_kv.benchmarks.attention so that the installed `ferrum-kv bench` runs
it too.
"""

from ferrum_kv.benchmarks.attention import main

if __name__ == "__main__":
    main()
