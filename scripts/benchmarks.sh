#!/usr/bin/env bash
# The benchmark runs the README's speed summary quotes, written into BENCHMARKS.md (--update
# replaces the rows they measure again): JAX against the PyTorch port at the paper and tiny
# configurations, the real training step's split, and, when a GPU is present, the accelerator
# preset. Needs the torch extra. Run it on an otherwise idle machine.
#     scripts/benchmarks.sh [extra `difffccf benchmark` flags, e.g. --out /tmp/B.md]
set -euo pipefail
difffccf=${DIFFFCCF:-difffccf}

$difffccf benchmark --configs paper --batch-sizes 1,4 --cases matmul,forward,train \
    --max-repeats 3 --budget-s 60 --case-timeout-s 3600 --update "$@"
$difffccf benchmark --configs paper --batch-sizes 1 --cases step_split \
    --max-repeats 3 --budget-s 60 --case-timeout-s 3600 --update "$@"
$difffccf benchmark --configs tiny --batch-sizes 4 --cases step_split \
    --max-repeats 5 --budget-s 20 --case-timeout-s 3600 --update "$@"
$difffccf benchmark --configs tiny --batch-sizes 1,4 --cases forward,train,sampling \
    --max-repeats 5 --budget-s 60 --case-timeout-s 3600 --update "$@"
if command -v nvidia-smi >/dev/null; then
    $difffccf benchmark --preset accelerator --update "$@"
fi
