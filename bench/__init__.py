"""Side-by-side benchmarks of tasklift against peer systems (see bench/README.md)."""
