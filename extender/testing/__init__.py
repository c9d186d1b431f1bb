"""Helpers shared by the tests, the demo, the benchmarks and the simulator's synthetic workloads."""
