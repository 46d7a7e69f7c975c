"""Splitting a folder's pairs into disjoint shares, and each pair's noise id, by name.

A pair belongs to share `hash(name) mod count` (`pair_hash`: SHA-256 of the name, stable across
machines and Python runs), so a share does not depend on which other pairs the folder holds:
files added between a run and its resumption move no pair to another share. A share is
(index, count); the command combines `--shard K/N` (by default the SLURM array task) with the
processes of a multi-process run (`combine`), so every process of every array task takes its
own pairs.

The noise of a pair comes from fold_in(seed key, `noise_id(name)`), never from its position, so
a pair comes out the same whichever share, batch or run fuses it.
"""

import hashlib

from difffccf_jax.errors import UserError

NOISE_ID_BITS = 31  # the sampler's pair ids are int32
SLURM_TASK_ID, SLURM_TASK_COUNT = "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"
SLURM_TASK_MIN = "SLURM_ARRAY_TASK_MIN"


def pair_hash(name):
    """A stable 64-bit integer of a pair's name."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")


def noise_id(name):
    """The pair id whose fold_in gives the pair `name` its noise (31 bits)."""
    return pair_hash(name) % (1 << NOISE_ID_BITS)


def content_id(*arrays):
    """A pair id from the pair's own pixels (for arrays given without names or ids)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(array.tobytes())
    return int.from_bytes(digest.digest()[:8], "big") % (1 << NOISE_ID_BITS)


def in_share(name, share):
    """Whether pair `name` belongs to share (index, count)."""
    index, count = share
    return pair_hash(name) % count == index


def parse_shard(text):
    """(K, N) of '--shard K/N' (0 <= K < N); UserError otherwise."""
    index, sep, count = str(text).partition("/")
    try:
        share = int(index), int(count)
    except ValueError:
        share = None
    if not sep or share is None or not 0 <= share[0] < share[1]:
        raise UserError(f"--shard {text}: expected K/N with 0 <= K < N, e.g. 0/4")
    return share


def shard_from_environment(environ):
    """(K, N) of the SLURM array task (task id minus the array's first id, task count), or
    (0, 1) outside an array job."""
    if SLURM_TASK_ID not in environ or SLURM_TASK_COUNT not in environ:
        return 0, 1
    try:
        index = int(environ[SLURM_TASK_ID]) - int(environ.get(SLURM_TASK_MIN, 0))
        count = int(environ[SLURM_TASK_COUNT])
    except ValueError as error:
        raise UserError(f"{SLURM_TASK_ID} / {SLURM_TASK_COUNT} / {SLURM_TASK_MIN}: expected "
                        f"integers ({error})") from error
    if not 0 <= index < count:
        raise UserError(f"SLURM array task {environ[SLURM_TASK_ID]} (first "
                        f"{environ.get(SLURM_TASK_MIN, 0)}) is not one of the "
                        f"{count} tasks; pass --shard K/N")
    return index, count


def combine(share, process_index, process_count):
    """The share of one process of a multi-process run within `share`: (K P + p, N P)."""
    index, count = share
    return index * process_count + process_index, count * process_count
