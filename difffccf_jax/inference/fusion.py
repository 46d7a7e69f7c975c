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

Sizes: each pair is fused at its own size, A's H x W (a B of another size is resized to A's), or
at S x S with resize_to=S (`--resize S`, as training sees pairs). For the U-Net, whose bottleneck
is the image shrunk 2^(levels - 1) times, a pair is padded at the bottom and right to a multiple
of that factor, each source with its own background (`images.pad_with_background`: the median
of its border pixels), and every output is cropped back. Padding at the bottom and right keeps
the pixels near the top-left corner, where the region rules read their reference values, the
image's own. The bottleneck's graph attention costs memory and time quadratic in its pixel
count, so on pairs larger than tile x tile after padding (default TILE_BOTTLENECK bottleneck
pixels a side) the network is evaluated in overlapping tiles (inference/tiling.py).

Pairs of equal padded size are batched together, so each size compiles once; pair i's noise
comes from fold_in(key, i) whatever its batch.

Everything is checked before the first file is written (checkpoint config, folders, every image,
sizes, existing outputs) and before the parameters are loaded; each pair's files are written
under temporary names and then renamed.
"""

import dataclasses
import os

import jax
import numpy as np
import tqdm

from difffccf_jax import color, files, parallel
from difffccf_jax.data import images, layouts
from difffccf_jax.errors import UserError
from difffccf_jax.inference import sampling, tiling
from difffccf_jax.model import checkpoints, unet
from difffccf_jax.model import settings as method_settings

EXTRAS_FOLDER = "extras"
GRID_SPACING = 4  # pixels between the lines of the deformation picture
GRID_PICTURE_SIZE = 512  # the deformation picture's size, at least
# The default tile, in bottleneck pixels a side: above it the network runs in tiles. With the
# tiny config on CPU a 512 px pair (64 x 64 bottleneck pixels) peaks at 1.3 GiB, a 1024 px pair
# (128 x 128) at 13.4 GiB, or 1.6 GiB in 512 px tiles.
TILE_BOTTLENECK = 64


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
    tiled: tuple = ()  # names of the pairs whose network ran in tiles
    notes: tuple = ()  # lines on inputs that were converted (`layouts.input_notes`)

    def summary(self):
        """One line for the command line."""
        notes = "".join([", registered" if self.registered else "",
                         ", stochastic" if self.stochastic else "",
                         f", {len(self.tiled)} in tiles" if self.tiled else ""])
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


def pair_files(paths, out, truncate=False):
    """[(path, array)] of one pair's SampleOutput `out` (NumPy, no batch axis); the fused
    channels as whole levels, truncated with `truncate` as the RGB image's are
    (config.sampling.output_levels)."""
    def levels(values):
        return color.from_unit(values, truncate=truncate).astype(np.uint8)

    items = [(paths["fused"], out.rgb)]
    if "deformation" in paths:
        items += [
            (paths["fused_y"], levels(out.fused[..., 0])),
            (paths["fused_cr"], levels(out.fused[..., 1])),
            (paths["fused_cb"], levels(out.fused[..., 2])),
            (paths["mask_m1_y"], color.to_uint8(255 * out.m1[..., 0])),
            (paths["mask_m2_cr"], color.to_uint8(255 * out.m2[..., 1])),
            (paths["mask_m2_cb"], color.to_uint8(255 * out.m2[..., 2])),
            (paths["region_cr"], np.where(out.region[..., 1], 255, 0).astype(np.uint8)),
            (paths["region_cb"], np.where(out.region[..., 2], 255, 0).astype(np.uint8)),
            (paths["deformation"], out.deformation.astype(np.float32)),
            (paths["deformation_grid"], deformation_grid_image(out.deformation)),
            (paths["warped_b"], color.ycrcb_to_rgb_uint8(color.from_unit(out.warped_b))),
        ]
    return items


# ---- sizes -------------------------------------------------------------------------------------

def size_multiple(model_config):
    """2^(levels - 1): how many times the U-Net shrinks an image to its bottleneck."""
    return 2 ** (len(model_config.channel_mult) - 1)


def padded_size(height, width, multiple):
    """(height, width) rounded up to multiples of `multiple`."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def check_sizes(resize_to, tile, multiple):
    """UserError for a --resize or --tile the model cannot use."""
    if resize_to is not None and resize_to < 1:
        raise UserError(f"--resize {resize_to}: expected a positive number of pixels")
    if tile < 1 or tile % multiple:
        raise UserError(f"--tile {tile}: expected a positive multiple of {multiple}, the factor "
                        "by which the checkpoint's U-Net shrinks an image to its bottleneck")


def check_compat_size(model_config, name, size, padded, tile, multiple):
    """UserError when the published model (model.compat), whose fixed position embedding needs
    a 32 x 32 bottleneck, would see an input window of another size for pair `name` (size and
    padded size (H, W))."""
    side = unet.COMPAT_BOTTLENECK[0] * multiple
    if not model_config.compat or tiling.window_shape(*padded, tile) == (side, side):
        return
    padding = "" if padded == size else f", padded to {padded[1]}x{padded[0]}"
    raise UserError(f"pair {name!r} is {size[1]}x{size[0]}{padding}: the published model "
                    f"(model.compat) fuses {side}x{side} images only (its fixed "
                    f"{unet.COMPAT_BOTTLENECK[0]}x{unet.COMPAT_BOTTLENECK[1]} bottleneck); pass "
                    f"--resize {side}")


def pad_pair(a, b, height, width):
    """(a, b) padded at the bottom and right to height x width, each with its own background."""
    return (images.pad_with_background(a, height, width),
            images.pad_with_background(b, height, width))


def groups_by_size(sizes):
    """{padded size: [pair indices]} in the order the sizes first occur."""
    groups = {}
    for index, size in enumerate(sizes):
        groups.setdefault(size, []).append(index)
    return groups


def crop(out, index, height, width):
    """Pair `index` of a batch's SampleOutput (NumPy) cropped to its top-left height x width."""
    return sampling.SampleOutput(*(field[index, :height, :width] for field in out))


def placed_on(sample, mesh):
    """`sample` (a `sampling.make_sampler` over `mesh`) with its host arguments first put on the
    shardings it was compiled for: in a multi-process run JAX refuses NumPy inputs to a sharded
    program, even one on this process's devices only."""
    replicated, split = parallel.replicated(mesh), parallel.batch_sharded(mesh)

    def call(params, schedule, a, b, key, pair_ids):
        a, b, pair_ids = jax.device_put((a, b, pair_ids), split)
        schedule, key = jax.device_put((schedule, key), replicated)
        return sample(params, schedule, a, b, key, pair_ids)
    return call


def fuse_by_size(sample, params, schedule, inputs, padded, key, batch_size, num_devices):
    """Yields (pair index, the pair's SampleOutput at its own size, NumPy) for the pairs
    `inputs` [(a [H, W, 1], b [H, W, 3])], each padded to its size in `padded` [(H', W')] and
    fused with the pairs of that size (`sampling.fuse_pairs`), with noise fold_in(key, index)."""
    for (height, width), indices in groups_by_size(padded).items():
        a, b = (np.stack(arrays) for arrays in zip(
            *(pad_pair(*inputs[i], height, width) for i in indices)))
        for start, batch in sampling.fuse_pairs(sample, params, schedule, a, b, key, batch_size,
                                                num_devices, indices):
            for offset in range(len(batch.rgb)):
                index = indices[start + offset]
                yield index, crop(batch, offset, *inputs[index][0].shape[:2])


def fuse_folder(checkpoint, out, data=None, a_dir=None, b_dir=None, task=None, steps=None,
                batch_size=None, seed=None, stochastic=False, output=None, register=None,
                resize_to=None, tile=None, save_extras=False, overwrite=False,
                show_progress=True, devices=None):
    """Fuses every pair under `data` (the task's published layout) or of the folders a_dir and
    b_dir with the checkpoint's model into `out`; returns a FusedFolder. Pairs keep their own
    size, or are resized to resize_to x resize_to; on pairs larger than tile x tile (after
    padding) the network runs in tiles (default: TILE_BOTTLENECK bottleneck pixels a side).
    Sampling settings left None come from the checkpoint's config (see `sampling_settings`).
    Everything is checked before the first file is written. devices: the devices that fuse
    (default: all of every process); one process of a multi-process run passes its
    jax.local_devices() to fuse alone."""
    config = checkpoints.read_config(checkpoint)
    settings = sampling_settings(config, steps, batch_size, seed, stochastic, output, register)
    multiple = size_multiple(config.model)
    tile = TILE_BOTTLENECK * multiple if tile is None else tile
    check_sizes(resize_to, tile, multiple)
    task = task or layouts.tasks_from_config(config.data)[0]
    root, layout = input_layout(config, task, data, a_dir, b_dir)
    pairs = layouts.list_pairs(root, layout)
    names = [pair.name for pair in pairs]
    sampler = method_settings.sampler_settings(config)
    inputs = [layouts.read_pair(pair, layout, resize_to, sampler.color_conversion)
              for pair in pairs]
    sizes = [a.shape[:2] for a, _ in inputs]
    padded = [padded_size(*size, multiple) for size in sizes]
    for name, size, padded_to in zip(names, sizes, padded):
        check_compat_size(config.model, name, size, padded_to, tile, multiple)
    planned = [output_paths(out, name, save_extras) for name in names]
    check_distinct(names, planned)
    if not overwrite:
        check_not_overwriting(planned)

    mesh = parallel.make_mesh(devices)
    # One process of several fusing on its own devices reads the checkpoint alone.
    alone = jax.process_count() > 1 and {
        device.process_index for device in mesh.devices.flat} == {jax.process_index()}
    _, params = checkpoints.load_for_inference(checkpoint, alone=alone)  # config: read above
    params = jax.device_put(params, parallel.replicated(mesh))
    network = tiling.TiledNetwork(unet.model_from_config(config.model), tile)
    sample, schedule = sampling.sampler_from_config(config, task, mesh=mesh, model=network)
    fused_pairs = fuse_by_size(placed_on(sample, mesh), params, schedule, inputs, padded,
                               jax.random.PRNGKey(settings.seed), settings.batch_size, mesh.size)
    os.makedirs(out, exist_ok=True)
    for index, fused in tqdm.tqdm(fused_pairs, total=len(names), desc="fuse", unit="pair",
                                  disable=not show_progress):
        for path in planned[index].values():
            os.makedirs(os.path.dirname(path), exist_ok=True)
        files.write_files(pair_files(planned[index], fused, sampler.truncate_output))
    return FusedFolder(out=out, task=task, names=tuple(names), outputs=tuple(planned),
                       notes=layouts.input_notes(pairs, layout),
                       steps=int(schedule.betas.shape[0]),
                       registered=sampler.register,
                       stochastic=bool(settings.add_noise),
                       tiled=tuple(name for name, size in zip(names, padded)
                                   if len(tiling.windows(*size, tile)) > 1))
