"""Benchmarks (manage.py hotcache_bench): arms run interleaved in one process; medians, spread, commands per op."""
