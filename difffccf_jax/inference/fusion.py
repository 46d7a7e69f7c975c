"""Fusing a folder of pairs with a trained model, one RGB PNG per pair (`difffccf fuse`).

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

import dataclasses
import os

import jax
import numpy as np
import tqdm

from difffccf_jax import color, files, parallel
from difffccf_jax.data import layouts
from difffccf_jax.errors import UserError
from difffccf_jax.inference import sampling
from difffccf_jax.model import checkpoints

EXTRAS_FOLDER = "extras"
GRID_SPACING = 4  # pixels between the lines of the deformation picture
GRID_PICTURE_SIZE = 512  # the deformation picture's size, at least


@dataclasses.dataclass(frozen=True)
class FusedFolder:
    """What `fuse_folder` wrote: the pairs' names, {kind: path} per pair (kind 'fused' is the
    RGB image), and the settings they were fused with."""
    out: str
    task: str
    names: tuple
    outputs: tuple
    steps: int
    registered: bool
    stochastic: bool

    def summary(self):
        """One line for the command line."""
        notes = "".join([", registered" if self.registered else "",
                         ", stochastic" if self.stochastic else ""])
        return (f"fused {len(self.names)} {self.task} pairs into {self.out} ({self.steps} "
                f"steps{notes})")


def sampling_settings(config, steps=None, batch_size=None, seed=None, stochastic=False,
                      output=None, register=None):
    """config.sampling with the given choices applied (checked); None keeps the config's."""
    settings = config.sampling
    chosen = dict(steps=steps, batch_size=batch_size, seed=seed, output=output,
                  register=register)
    for field, value in chosen.items():
        if value is not None:
            settings[field] = value
    settings.add_noise = bool(settings.add_noise or stochastic)
    if not 1 <= settings.steps <= config.diffusion.steps:
        raise UserError(f"--steps {settings.steps}: expected 1..{config.diffusion.steps} "
                        "(the diffusion steps of the checkpoint)")
    if settings.batch_size < 1:
        raise UserError(f"--batch-size {settings.batch_size}: expected a positive number")
    return settings


def input_layout(config, task, data=None, a_dir=None, b_dir=None):
    """(data root, Layout) of the input: the task's published layout under `data` (or `data`
    being the task's folder itself), or the two explicit folders a_dir, b_dir as a layout whose
    sub-folders are absolute paths."""
    layout = layouts.layout_from_config(config.data, task)
    explicit = a_dir is not None or b_dir is not None
    if explicit == (data is not None) or (explicit and None in (a_dir, b_dir)):
        raise UserError("give either --data DIR, or both --a-dir DIR and --b-dir DIR")
    if not explicit:
        inside_task_folder = not os.path.isdir(os.path.join(data, layout.folder)) and any(
            os.path.isdir(os.path.join(data, a)) for a, _ in layout.spellings())
        if inside_task_folder:
            return data, dataclasses.replace(layout, folder=os.curdir)
        return data, layout
    for flag, folder in (("--a-dir", a_dir), ("--b-dir", b_dir)):
        if not os.path.isdir(folder):
            raise UserError(f"{flag} {folder}: folder not found")
    return os.curdir, dataclasses.replace(layout, folder=os.curdir, alternates=(),
                                          a=os.path.abspath(a_dir), b=os.path.abspath(b_dir))


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


def fuse_folder(checkpoint, out, data=None, a_dir=None, b_dir=None, task=None, steps=None,
                batch_size=None, seed=None, stochastic=False, output=None, register=None,
                save_extras=False, overwrite=False, show_progress=True):
    """Fuses every pair under `data` (the task's published layout) or of the folders a_dir and
    b_dir with the checkpoint's model into `out`; returns a FusedFolder. Sampling settings left
    None come from the checkpoint's config (see `sampling_settings`). Everything is checked
    before the first file is written."""
    config, params = checkpoints.load_for_inference(checkpoint)
    settings = sampling_settings(config, steps, batch_size, seed, stochastic, output, register)
    task = task or config.data.task
    root, layout = input_layout(config, task, data, a_dir, b_dir)
    pairs = layouts.load_pairs(root, layout, config.data.image_size)
    planned = [output_paths(out, name, save_extras) for name in pairs.names]
    check_distinct(pairs.names, planned)
    if not overwrite:
        check_not_overwriting(planned)

    mesh = parallel.make_mesh()
    params = jax.device_put(params, parallel.replicated(mesh))
    sample, schedule = sampling.sampler_from_config(config, task, mesh=mesh)
    key = jax.random.PRNGKey(settings.seed)
    os.makedirs(out, exist_ok=True)
    batches = sampling.fuse_pairs(sample, params, schedule, pairs.a, pairs.b, key,
                                  settings.batch_size, mesh.size)
    with tqdm.tqdm(total=len(pairs.names), desc="fuse", unit="pair",
                   disable=not show_progress) as progress:
        for start, batch in batches:
            for offset in range(len(batch.rgb)):
                paths = planned[start + offset]
                for path in paths.values():
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                files.write_files(pair_files(paths, batch, offset))
            progress.update(len(batch.rgb))
    return FusedFolder(out=out, task=task, names=tuple(pairs.names), outputs=tuple(planned),
                       steps=int(schedule.betas.shape[0]),
                       registered=bool(sampling.registers(config)),
                       stochastic=bool(settings.add_noise))
