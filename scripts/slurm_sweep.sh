#!/usr/bin/env bash
# An example SLURM sweep: the adaptive loss weighting on and off, three seeds each, on nodes of
# 8 GPUs, submitted through submitit as one job array (at most 4 runs at a time). Each run
# trains, requeues itself at the time limit and resumes, then fuses and scores its held-out
# pairs. docs/cluster.md explains every flag.
#     scripts/slurm_sweep.sh DATA RUNS [more `difffccf sweep` flags, e.g. --partition gpu
#         --account mylab --setup 'module load cuda']
set -euo pipefail
data=${1:?usage: scripts/slurm_sweep.sh DATA RUNS [flags]}
runs=${2:?usage: scripts/slurm_sweep.sh DATA RUNS [flags]}
shift 2
difffccf=${DIFFFCCF:-difffccf}

$difffccf sweep --sweep configs/sweeps/adaptive_weighting.py:paper --workdir "$runs/weighting" \
    --launcher slurm --nodes 1 --gpus-per-node 8 --parallel 4 --time 24:00:00 \
    --config.data.root="$data" --config.data.batch_size=32 "$@"
echo "progress and results: $difffccf sweep-report --workdir $runs/weighting --sort-by MI"
