"""`difffccf fuse`: fuses every pair of a folder with a trained model, one RGB PNG per pair.

Output layout under --out, for a pair whose files are named NAME.EXT:

    NAME.png                       the fused RGB image
    extras/NAME/                   with --save-extras:
        fused_y.png, fused_cr.png, fused_cb.png    the fused YCrCb channels (0..255)
        mask_m1_y.png, mask_m2_cr.png, mask_m2_cb.png
                                   the masks that entered each channel's fusion rule (0..255)
        region_cr.png, region_cb.png               the chroma regions R (255 inside)
        deformation.npy            [H, W, 2] float32 pixels (x, then y): B was sampled at
                                   (x + dx, y + dy)
        deformation_grid.png       a regular grid moved by the deformation
        warped_b.png               B after registration (RGB)

Everything is checked before the first file is written (checkpoint, folders, every image,
existing outputs); each pair's files are written under temporary names and then renamed.
"""

import argparse
import os

from difffccf_jax.errors import UserError

EXTRAS_FOLDER = "extras"
GRID_SPACING = 4  # pixels between the lines of the deformation picture
GRID_PICTURE_SIZE = 512  # the deformation picture's size, at least


def register(subparsers):
    parser = subparsers.add_parser(
        "fuse", help="fuse image pairs with a trained model",
        description="Fuse every A/B pair of a folder in the published layout (or of two "
                    "folders of equally named images) into one RGB PNG per pair, named as "
                    "the input. The model, its diffusion and sampling settings come from the "
                    "checkpoint's config.json.")
    parser.add_argument("--checkpoint", required=True, metavar="DIR",
                        help="checkpoint directory written by `difffccf train` or "
                             "`difffccf convert-torch`")
    parser.add_argument("--task", default=None,
                        help="task key (pet, spect, ct, gfp, adni) choosing the folder layout "
                             "and the region rules; default: the checkpoint's data.task")
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
    parser.add_argument("--register", action=argparse.BooleanOptionalAction, default=None,
                        help="warp B by the network's predicted deformation before fusing, or "
                             "fuse B as given (default: the checkpoint's sampling.register)")
    parser.add_argument("--save-extras", action="store_true",
                        help="also write the fused channels, masks, regions, deformation "
                             "field and warped B under OUT/extras/NAME/")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs that already exist")
    parser.set_defaults(run=run)


def sampling_settings(config, args):
    """config.sampling with the command line's choices applied (checked)."""
    settings = config.sampling
    if args.steps is not None:
        settings.steps = args.steps
    if args.batch_size is not None:
        settings.batch_size = args.batch_size
    if args.seed is not None:
        settings.seed = args.seed
    if args.output is not None:
        settings.output = args.output
    settings.add_noise = bool(settings.add_noise or args.stochastic)
    if args.register is not None:
        settings.register = args.register
    if not 1 <= settings.steps <= config.diffusion.steps:
        raise UserError(f"--steps {settings.steps}: expected 1..{config.diffusion.steps} "
                        "(the diffusion steps of the checkpoint)")
    if settings.batch_size < 1:
        raise UserError(f"--batch-size {settings.batch_size}: expected a positive number")
    return settings


def input_layout(args, config, task):
    """(data root, Layout) of the input: the task's published layout under --data (or --data
    being the task's folder itself), or the two explicit folders as a layout whose sub-folders
    are absolute paths."""
    import dataclasses

    from difffccf_jax.data import layouts

    layout = layouts.layout_from_config(config.data, task)
    explicit = args.a_dir is not None or args.b_dir is not None
    if explicit == (args.data is not None) or (explicit and None in (args.a_dir, args.b_dir)):
        raise UserError("give either --data DIR, or both --a-dir DIR and --b-dir DIR")
    if not explicit:
        inside_task_folder = not os.path.isdir(os.path.join(args.data, layout.folder)) and any(
            os.path.isdir(os.path.join(args.data, a)) for a, _ in layout.spellings())
        if inside_task_folder:
            return args.data, dataclasses.replace(layout, folder=os.curdir)
        return args.data, layout
    for flag, folder in (("--a-dir", args.a_dir), ("--b-dir", args.b_dir)):
        if not os.path.isdir(folder):
            raise UserError(f"{flag} {folder}: folder not found")
    return os.curdir, dataclasses.replace(layout, folder=os.curdir, alternates=(),
                                          a=os.path.abspath(args.a_dir),
                                          b=os.path.abspath(args.b_dir))


def output_paths(out, name, save_extras):
    """{kind: path} of one pair's outputs; kind 'fused' is the RGB image."""
    stem = os.path.splitext(name)[0]
    paths = dict(fused=os.path.join(out, stem + ".png"))
    if save_extras:
        folder = os.path.join(out, EXTRAS_FOLDER, stem)
        for kind in ("fused_y", "fused_cr", "fused_cb", "mask_m1_y", "mask_m2_cr", "mask_m2_cb",
                     "region_cr", "region_cb", "deformation_grid", "warped_b"):
            paths[kind] = os.path.join(folder, kind + ".png")
        paths["deformation"] = os.path.join(folder, "deformation.npy")
    return paths


def check_distinct(names, planned):
    """Raises UserError when two inputs would write the same output (same stem)."""
    seen = {}
    for name, paths in zip(names, planned):
        if paths["fused"] in seen:
            raise UserError(f"input images {seen[paths['fused']]} and {name} would both be "
                            f"written to {paths['fused']}; rename one of them")
        seen[paths["fused"]] = name


def check_not_overwriting(planned):
    """Raises UserError when any planned output exists (the first is named)."""
    existing = [path for paths in planned for path in paths.values() if os.path.exists(path)]
    if existing:
        raise UserError(f"{existing[0]} already exists ({len(existing)} of the outputs do); "
                        "pass --overwrite to replace them or choose another --out")


def deformation_grid_image(deformation, spacing=GRID_SPACING, size=GRID_PICTURE_SIZE):
    """uint8 [S, S, 3] picture of the grid lines every `spacing` pixels moved to (x + dx, y + dy)
    by `deformation` [H, W, 2] (black), over the regular grid (light grey)."""
    import numpy as np
    from PIL import Image, ImageDraw

    height, width = deformation.shape[:2]
    scale = max(1, -(-size // max(height, width)))
    picture = Image.new("RGB", (width * scale, height * scale), "white")
    draw = ImageDraw.Draw(picture)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    moved_x = (cols + deformation[..., 0] + 0.5) * scale
    moved_y = (rows + deformation[..., 1] + 0.5) * scale
    for lines_x, lines_y, fill in (((cols + 0.5) * scale, (rows + 0.5) * scale, (200, 200, 200)),
                                   (moved_x, moved_y, (0, 0, 0))):
        for row in range(0, height, spacing):
            draw.line(list(zip(lines_x[row], lines_y[row])), fill=fill, width=1)
        for col in range(0, width, spacing):
            draw.line(list(zip(lines_x[:, col], lines_y[:, col])), fill=fill, width=1)
    return np.asarray(picture)


def pair_files(paths, out, index):
    """[(path, array)] of pair `index` of a batch's SampleOutput `out` (NumPy)."""
    import numpy as np

    from difffccf_jax import color

    def levels(values):
        return color.from_unit(values).astype(np.uint8)

    items = [(paths["fused"], out.rgb[index])]
    if "deformation" in paths:
        fused, m1, m2, region = (out.fused[index], out.m1[index], out.m2[index],
                                 out.region[index])
        items += [
            (paths["fused_y"], levels(fused[..., 0])),
            (paths["fused_cr"], levels(fused[..., 1])),
            (paths["fused_cb"], levels(fused[..., 2])),
            (paths["mask_m1_y"], color.to_uint8(255 * m1[..., 0])),
            (paths["mask_m2_cr"], color.to_uint8(255 * m2[..., 1])),
            (paths["mask_m2_cb"], color.to_uint8(255 * m2[..., 2])),
            (paths["region_cr"], np.where(region[..., 1], 255, 0).astype(np.uint8)),
            (paths["region_cb"], np.where(region[..., 2], 255, 0).astype(np.uint8)),
            (paths["deformation"], out.deformation[index].astype(np.float32)),
            (paths["deformation_grid"], deformation_grid_image(out.deformation[index])),
            (paths["warped_b"], color.ycrcb_to_rgb_uint8(color.from_unit(out.warped_b[index]))),
        ]
    return items


def run(args):
    import jax
    import tqdm

    from difffccf_jax import files, parallel
    from difffccf_jax.inference import sampling
    from difffccf_jax.model import checkpoints
    from difffccf_jax.data import layouts

    config, params = checkpoints.load_for_inference(args.checkpoint)
    settings = sampling_settings(config, args)
    task = args.task or config.data.task
    root, layout = input_layout(args, config, task)
    pairs = layouts.load_pairs(root, layout, config.data.image_size)
    planned = [output_paths(args.out, name, args.save_extras) for name in pairs.names]
    check_distinct(pairs.names, planned)
    if not args.overwrite:
        check_not_overwriting(planned)

    mesh = parallel.make_mesh()
    params = jax.device_put(params, parallel.replicated(mesh))
    sample, schedule = sampling.sampler_from_config(config, task, mesh=mesh)
    key = jax.random.PRNGKey(settings.seed)
    os.makedirs(args.out, exist_ok=True)
    batches = sampling.fuse_pairs(sample, params, schedule, pairs.a, pairs.b, key,
                                  settings.batch_size, mesh.size)
    with tqdm.tqdm(total=len(pairs.names), desc="fuse", unit="pair") as progress:
        for start, out in batches:
            for offset in range(len(out.rgb)):
                paths = planned[start + offset]
                for path in paths.values():
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                files.write_files(pair_files(paths, out, offset))
            progress.update(len(out.rgb))
    print(f"fused {len(pairs.names)} {task} pairs into {args.out} ({schedule.betas.shape[0]} "
          f"steps{', registered' if sampling.registers(config) else ''}"
          f"{', stochastic' if settings.add_noise else ''})")
