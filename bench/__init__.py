"""The benchmark: the chat relay against the fake model called directly (see README, "Benchmark")."""
