"""`difffccf benchmark`: the measuring helpers, the cases (each in its own process) and the
suite that chooses them and writes BENCHMARKS.md."""
