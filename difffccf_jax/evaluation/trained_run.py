"""Fusing and scoring a trained run once, whether it trained in one process or in several.

A sweep run fuses its task's held-out pairs (config.data.eval_root, else the training pairs)
with the run's checkpoint and scores them. In a multi-process run, process 0 does this alone on
its own devices (jax.local_devices(): sampling needs no other host, and a mesh spanning hosts
cannot take the sampler's host arrays) while the other processes wait at a barrier, so that no
process leaves, and ends the job, before the scores are written.

    scores = trained_run.score(config, run_dir)  # process 0: dict; the others: None
"""

import os

import jax

from difffccf_jax import parallel

FUSED_FOLDER = "fused"
# How long the other processes wait for process 0 to fuse and score (a long held-out set with
# the paper's 2000 sampling steps takes hours).
WAIT_SECONDS = 7 * 24 * 3600


def fuse_and_score(config, run_dir, devices=None):
    """Fuses the held-out pairs of `run_dir`'s checkpoint on `devices` into run_dir/fused and
    returns the final training loss and the mean fusion metrics, e.g. {'loss': ..., 'MI': ...}."""
    from difffccf_jax.data import layouts
    from difffccf_jax.evaluation import scoring
    from difffccf_jax.inference import fusion
    from difffccf_jax.training import train

    fused = os.path.join(run_dir, FUSED_FOLDER)
    scored_root = config.data.eval_root or config.data.root
    task = layouts.tasks_from_config(config.data)[0]
    fusion.fuse_folder(os.path.join(run_dir, train.CHECKPOINT_DIR), fused, data=scored_root,
                       task=task, overwrite=True, devices=devices).check()
    layout = layouts.layout_from_config(config.data, task)
    scores, _ = scoring.score_pairs(layouts.list_pairs(scored_root, layout), layout,
                                    {"run": fused}, with_baselines=False)
    summary = scoring.summarise(scores["run"])
    final = train.read_metrics_log(run_dir)[-1]
    return {"loss": final["loss"], **{name: s.mean for name, s in summary.items()}}


def score(config, run_dir):
    """`fuse_and_score` by process 0 on its local devices, every process returning once it is
    done: the scores on process 0, None on the others. When process 0 fails, it still meets
    the others at the barrier before raising, so they return at once instead of waiting for
    its exit."""
    scores = None
    try:
        if jax.process_index() == 0:
            scores = fuse_and_score(config, run_dir, devices=jax.local_devices())
    finally:
        parallel.wait_for_all_processes(f"difffccf-scored-{os.path.abspath(run_dir)}",
                                        timeout_seconds=WAIT_SECONDS)
    return scores
