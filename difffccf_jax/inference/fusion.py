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

Sizes: each pair is fused at its own size, A's H x W (a B of another size but the same aspect
ratio is resized to A's), or at S x S with resize_to=S (`--resize S`, as training sees pairs),
padded to its size bucket and cropped back (inference/sizes.py); on pairs larger than tile x
tile the network is evaluated in overlapping tiles (inference/tiling.py).

Streaming: the pairs are read in a few threads a bounded number ahead, fused batch by batch by a
`fuser.Fuser` (one batch on the devices while the previous one is written), and written in a
few threads, so memory does not grow with the folder. Each pair's files are written under
temporary names and then renamed; a pair whose outputs all exist is not fused again (unless
`overwrite`), so a rerun of an interrupted run fuses only what is missing (and removes the
temporary files the interrupted run left for its pairs). A pair that cannot be
read, has no A or no B, or whose A and B differ in aspect ratio is skipped and listed with its
reason in OUT/failures.jsonl (one JSON object a line; `failures.K-of-N.jsonl` for share K of
N; the processes of a multi-process run each write their own, which `combine_processes`
gathers into their share's one list). Each pair's noise comes from its name
(`shards.noise_id`), so a share of the folder (`share=(K, N)`, `shards.in_share`) fuses its
pairs exactly as a run over the whole folder.

The checkpoint's config, the folders, the pair names and the settings are checked before the
parameters are loaded; nothing is written before the parameters are loaded.
"""

import contextlib
import dataclasses
import functools
import json
import os

import jax
import numpy as np
import tqdm

from difffccf_jax import color, files, parallel, pipeline
from difffccf_jax.data import images, layouts
from difffccf_jax.errors import UserError
from difffccf_jax.inference import fuser as fuser_module
from difffccf_jax.inference import shards, sizes
from difffccf_jax.model import checkpoints

EXTRAS_FOLDER = "extras"
GRID_SPACING = 4  # pixels between the lines of the deformation picture
GRID_PICTURE_SIZE = 512  # the deformation picture's size, at least
FAILURES_NAME = "failures"
IO_WORKERS = 2  # threads reading, and threads writing, pairs
# How long the processes of a multi-process run wait for the slowest to finish its share (one
# whose share was fused before, in a resumed run, may wait for hours).
FINISH_WAIT_S = 7 * 24 * 3600
GATHERED_FIELDS = ("names", "reused", "tiled", "notes", "failures")


@dataclasses.dataclass(frozen=True)
class FusedFolder:
    """What `fuse_folder` did: `names`, the pairs of its share whose outputs exist now (fused
    in this run, or `reused`: complete before it), {kind: path} per pair in `outputs` (kind
    'fused' is the RGB image), the pairs skipped ((name, reason) in `failures`, listed in the
    file `failures_path`), and the settings they were fused with."""
    out: str
    task: str
    names: tuple
    outputs: tuple
    steps: int
    registered: bool
    stochastic: bool
    tiled: tuple = ()  # names of the pairs fused in this run whose network ran in tiles
    notes: tuple = ()  # lines on inputs that were converted (`layouts.notes_lines`)
    reused: tuple = ()  # names of the pairs whose outputs were complete already
    failures: tuple = ()
    failures_path: str = ""

    def summary(self):
        """One line for the command line."""
        notes = "".join([", registered" if self.registered else "",
                         ", stochastic" if self.stochastic else "",
                         f", {len(self.tiled)} in tiles" if self.tiled else ""])
        reused = f", {len(self.reused)} done before" if self.reused else ""
        skipped = (f", skipped {len(self.failures)}: see {self.failures_path}"
                   if self.failures else "")
        return (f"fused {len(self.names) - len(self.reused)} {self.task} pairs into {self.out} "
                f"({self.steps} steps{notes}){reused}{skipped}")

    def check(self):
        """Raises UserError naming the first skipped pair, for callers that need every pair."""
        if self.failures:
            name, reason = self.failures[0]
            raise UserError(f"{self.summary()}; the first, {name}: {reason}")


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


def is_complete(paths):
    """Whether every output of a pair exists (each was renamed into place whole)."""
    return all(os.path.exists(path) for path in paths.values())


def remove_stale_temporaries(out, names):
    """Removes the temporary files that a killed run left behind for the pairs `names` (in
    OUT and their extras folders); other pairs' files, which another share may be writing, are
    left alone."""
    stems = {os.path.splitext(name)[0] for name in names}
    folders = [(out, True)] + [(os.path.join(out, EXTRAS_FOLDER, stem), False)
                               for stem in stems]
    for folder, top in folders:
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            target = files.temporary_target(entry.name)
            if target and (not top or os.path.splitext(target)[0] in stems):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path)


def failures_path(out, share):
    """OUT/failures.jsonl, or OUT/failures.K-of-N.jsonl for share (K, N) of several."""
    index, count = share
    suffix = "" if count == 1 else f".{index}-of-{count}"
    return os.path.join(out, f"{FAILURES_NAME}{suffix}.jsonl")


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


def write_failures(path, failures):
    """Writes [(name, reason)] to `path` as JSON lines (atomically), or removes the list an
    earlier run left there when there are none."""
    if failures:
        files.write_text(path, "".join(json.dumps(dict(name=name, reason=reason)) + "\n"
                                       for name, reason in failures))
    elif os.path.exists(path):
        os.remove(path)


def read_input(fuser, pair, resize_to):
    """(PairInput, its `layouts.pair_notes`) of one pair, or (None, the reason it is skipped)."""
    try:
        a_image, b_image = images.read_image(pair.a), images.read_image(pair.b)
        prepared = fuser.prepare(pair.name, shards.noise_id(pair.name), a_image, b_image,
                                 pair.b, resize_to)
        notes = layouts.pair_notes(pair, fuser.layout, b_image)
    except UserError as error:
        return None, str(error)
    size_error = fuser.size_error(*prepared.a.shape[:2])
    if size_error:
        return None, f"pair {pair.name!r} is {size_error}"
    return prepared, notes


def write_pair(planned, truncate, result):
    """Writes one pair's outputs (`pair_files`) all-or-nothing; returns its name."""
    name, out = result
    for path in planned[name].values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
    files.write_files(pair_files(planned[name], out, truncate))
    return name


def fuse_folder(checkpoint, out, data=None, a_dir=None, b_dir=None, task=None, steps=None,
                batch_size=None, seed=None, stochastic=False, output=None, chroma=None,
                register=None, detail_of_b=None, resize_to=None, tile=None, save_extras=False,
                overwrite=False, share=(0, 1), devices=None, show_progress=True):
    """Fuses the pairs under `data` (the task's published layout) or of the folders a_dir and
    b_dir that belong to `share` (K, N) (`shards.in_share`; all of them by default) with the
    checkpoint's model into `out` (`fuse_into_folder`); returns a FusedFolder. Sampling
    settings left None come from the checkpoint's config (`fuser.sampling_settings`); on pairs
    larger than tile x tile the network runs in tiles; devices: those the batches are split
    over (default this process's local devices)."""
    config = checkpoints.read_config(checkpoint)
    task = task or layouts.tasks_from_config(config.data)[0]
    root, layout = input_layout(config, task, data, a_dir, b_dir)
    sizes.check_resize(resize_to)
    pairs, unmatched = layouts.match_pairs(root, layout)
    check_distinct([pair.name for pair in pairs],
                   [output_paths(out, pair.name, False) for pair in pairs])
    fuser = fuser_module.Fuser.from_checkpoint(
        checkpoint, task=task, steps=steps, batch_size=batch_size, seed=seed,
        stochastic=stochastic, output=output, chroma=chroma, register=register,
        detail_of_b=detail_of_b, tile=tile, devices=devices)
    return fuse_into_folder(fuser, pairs, unmatched, out, resize_to, save_extras, overwrite,
                            share, show_progress)


def fuse_into_folder(fuser, pairs, unmatched, out, resize_to=None, save_extras=False,
                     overwrite=False, share=(0, 1), show_progress=True):
    """Fuses the `pairs` [layouts.PairFiles] of `share` with `fuser` into `out`, streaming;
    returns a FusedFolder. Pairs whose outputs are complete are kept unless `overwrite`; the
    pairs that cannot be fused, and those of `unmatched` ({name: reason}), are listed in
    `failures_path`. Pairs keep their own size, or are resized to resize_to x resize_to."""
    pairs = [pair for pair in pairs if shards.in_share(pair.name, share)]
    planned = {pair.name: output_paths(out, pair.name, save_extras) for pair in pairs}
    reused = set() if overwrite else {pair.name for pair in pairs
                                      if is_complete(planned[pair.name])}
    todo = [pair for pair in pairs if pair.name not in reused]
    failures = [(name, reason) for name, reason in unmatched.items()
                if shards.in_share(name, share)]
    notes, tiled = {}, set()
    remove_stale_temporaries(out, planned)
    os.makedirs(out, exist_ok=True)
    progress = tqdm.tqdm(total=len(todo), desc="fuse", unit="pair", disable=not show_progress)

    def readable(reads):
        for pair, (prepared, detail) in zip(todo, reads):
            if prepared is None:
                failures.append((pair.name, detail))
                progress.update(1)
                continue
            notes[pair.name] = detail
            if sizes.is_tiled(fuser.bucket(*prepared.a.shape[:2]), fuser.tile):
                tiled.add(pair.name)
            yield prepared

    depth = 2 * fuser.batch_size + IO_WORKERS
    reads = pipeline.ordered_map(functools.partial(read_input, fuser, resize_to=resize_to),
                                 todo, IO_WORKERS, depth)
    fused = fuser.fuse_stream(readable(reads), extras=save_extras)
    done = set(reused)
    for name in pipeline.ordered_map(functools.partial(write_pair, planned,
                                                       fuser.settings.truncate_output), fused, IO_WORKERS,
                                     depth):
        done.add(name)
        progress.update(1)
    progress.close()
    failed_path = failures_path(out, share)
    write_failures(failed_path, failures)
    names = tuple(pair.name for pair in pairs if pair.name in done)
    return FusedFolder(out=out, task=fuser.task, names=names,
                       outputs=tuple(planned[name] for name in names),
                       notes=layouts.notes_lines(notes, fuser.layout), steps=fuser.steps,
                       registered=fuser.settings.register,
                       stochastic=fuser.settings.add_noise,
                       tiled=tuple(name for name in names if name in tiled),
                       reused=tuple(name for name in names if name in reused),
                       failures=tuple(failures), failures_path=failed_path)


def combine_processes(fused, share, save_extras=False):
    """The FusedFolder of every process of a multi-process run, each having fused its part of
    `share` (`shards.combine`) into the same folder as `fused`, this process's: waits for all
    of them, gathers their pairs and failures, lists the failures once (process 0 writes
    failures_path(out, share)) and removes each process's own list. All processes call it."""
    parallel.wait_for_all_processes("fuse-finished", FINISH_WAIT_S)
    parts = [json.loads(data) for data in parallel.gather_bytes(json.dumps(
        {field: getattr(fused, field) for field in GATHERED_FIELDS}).encode())]
    gathered = {field: [item for part in parts for item in part[field]]
                for field in GATHERED_FIELDS}
    combined = dataclasses.replace(
        fused, names=tuple(gathered["names"]), reused=tuple(gathered["reused"]),
        tiled=tuple(gathered["tiled"]), notes=tuple(dict.fromkeys(gathered["notes"])),
        failures=tuple(tuple(failure) for failure in gathered["failures"]),
        outputs=tuple(output_paths(fused.out, name, save_extras)
                      for name in gathered["names"]),
        failures_path=failures_path(fused.out, share))
    if jax.process_index() == 0:
        write_failures(combined.failures_path, combined.failures)
    if fused.failures_path != combined.failures_path:
        with contextlib.suppress(FileNotFoundError):
            os.remove(fused.failures_path)
    return combined
