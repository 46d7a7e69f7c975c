"""`difffccf fuse`: fuses every pair of a folder with a trained model, one RGB PNG per pair
(`inference.fusion.fuse_folder`, where the output layout is described).

Every process of a multi-process run (`jax.distributed`, started as for training) and every
task of a SLURM job array (or `--shard K/N`) fuses its own share of the pairs on its own local
devices; all of them write to the same output folder. The processes of one run then wait for
each other, and process 0 closes the run: one line, one list of skipped pairs.
"""

import argparse
import os

FUSE_ARGUMENTS = ("checkpoint", "out", "data", "a_dir", "b_dir", "task", "steps", "batch_size",
                  "seed", "stochastic", "output", "chroma", "register", "detail_of_b",
                  "resize_to", "tile", "save_extras", "overwrite")


def register(subparsers):
    parser = subparsers.add_parser(
        "fuse", help="fuse image pairs with a trained model",
        description="Fuse every A/B pair of a folder in the published layout (or of two "
                    "folders of equally named images) into one RGB PNG per pair, named as "
                    "the input. Each output has the size of its pair's A image (any H x W); a "
                    "B image of another size is resized to A's size first. The model, its "
                    "diffusion and sampling settings come from the checkpoint's config.json.")
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="checkpoint directory written by `difffccf train` or "
                             "`difffccf convert-torch`")
    parser.add_argument("--task", default=None,
                        help="task key (pet, spect, ct, gfp, adni) choosing the folder layout "
                             "and the region rules; default: the first of the checkpoint's "
                             "data.tasks")
    source = parser.add_argument_group("input (either --data, or --a-dir with --b-dir)")
    source.add_argument("--data", metavar="DIR",
                        help="data root holding the task's folder in the published layout "
                             "(or that folder itself)")
    source.add_argument("--a-dir", metavar="DIR", help="folder of the grey source A images")
    source.add_argument("--b-dir", metavar="DIR",
                        help="folder of the functional source B images, named as in --a-dir")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--steps", type=int, default=None,
                        help="reverse steps; fewer than the diffusion steps respaces the "
                             "schedule (default: the checkpoint's sampling.steps)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="pairs per compiled batch, rounded up to a multiple of the device "
                             "count (default: the checkpoint's sampling.batch_size)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the initial noise (default: sampling.seed)")
    parser.add_argument("--stochastic", action="store_true",
                        help="add posterior noise at every step (the paper is deterministic)")
    parser.add_argument("--output", choices=("clean", "trajectory"), default=None,
                        help="the fused Y channel: 'clean', m1 A + (1 - m1) B_Y with the last "
                             "step's mask (no residual sampling noise), or 'trajectory', the "
                             "reverse run's state as published (default: the checkpoint's "
                             "sampling.output)")
    parser.add_argument("--chroma", choices=("source", "fused"), default=None,
                        help="the fused image's Cr and Cb: 'source', B's own (its colours "
                             "kept), or 'fused', the chroma runs' result as published (default: "
                             "the checkpoint's sampling.chroma)")
    parser.add_argument("--detail-of-b", action=argparse.BooleanOptionalAction, default=None,
                        help="with the clean output, add B's detail band where the fused Y "
                             "keeps A inside B's functional region, or not (default: the "
                             "checkpoint's sampling.detail_of_b)")
    parser.add_argument("--register", action=argparse.BooleanOptionalAction, default=None,
                        help="warp B by the network's predicted deformation before fusing, or "
                             "fuse B as given (default: the checkpoint's sampling.register)")
    parser.add_argument("--resize", dest="resize_to", type=int, default=None, metavar="N",
                        help="resize every pair to N x N before fusing, as training does, and "
                             "write N x N outputs (default: keep each pair's own size; the "
                             "published model, model.compat, needs --resize 256 for images "
                             "of other sizes)")
    parser.add_argument("--tile", type=int, default=None, metavar="N",
                        help="on pairs larger than N x N (after padding to the U-Net's size "
                             "multiple) evaluate the network in overlapping N x N tiles, "
                             "blended, so its bottleneck attention fits in memory; noise, "
                             "chroma regions and registration stay whole-image (default: 64 "
                             "bottleneck pixels a side, 512 for a 4-level U-Net)")
    parser.add_argument("--save-extras", action="store_true",
                        help="also write the fused channels, masks, regions, deformation "
                             "field and warped B under OUT/extras/NAME/")
    parser.add_argument("--overwrite", action="store_true",
                        help="fuse again the pairs whose outputs exist (default: keep them, "
                             "so a rerun fuses only the pairs an interrupted run left)")
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="fuse only share K of N (0 <= K < N) of the pairs, chosen by a "
                             "hash of each pair's name; the N shares together fuse exactly "
                             "what one run would (default: the SLURM array task, "
                             "SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT, else 0/1)")
    parser.set_defaults(run=run)


def run(args):
    """Fuses this process's share; process 0 reports the run of all processes (one line, one
    list of the skipped pairs); exit status 1 in every process when pairs were skipped."""
    import jax

    from difffccf_jax import parallel
    from difffccf_jax.inference import fusion, shards

    shard = (shards.shard_from_environment(os.environ) if args.shard is None
             else shards.parse_shard(args.shard))
    parallel.initialize_distributed(False)
    share = shards.combine(shard, jax.process_index(), jax.process_count())
    fused = fusion.fuse_folder(**{name: getattr(args, name) for name in FUSE_ARGUMENTS},
                               share=share)
    if jax.process_count() > 1:
        fused = fusion.combine_processes(fused, shard, args.save_extras)
    if jax.process_index() == 0:
        for note in fused.notes:
            print(note)
        print(fused.summary())
    return 1 if fused.failures else 0
