"""Scheduler simulation: the cost of one decode step's KV-cache bookkeeping.

The benchmark lives in ferrum_kv.benchmarks.scheduler so that the installed `ferrum-kv bench` runs it too.
"""

from ferrum_kv.benchmarks.scheduler import main

if __name__ == "__main__":
    main()
