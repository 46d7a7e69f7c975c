"""Loaders for the five published layouts (docs/method.md section 2).

Each task lives in `<root>/<folder>/` with one sub-folder of source-A slices and one of source-B
slices, paired by file name and ordered by the integer value of the file stem (then by name).
Folder names come from `config.data.layouts` (the published names are the defaults).

GFP has two published spellings: the reference loader reads `t` (phase contrast, A) and `g`
(GFP, B); the reference README shows `g` (phase contrast, A) and `f` (fluorescence, B). The
layout's `alternates` lists such other "A:B" spellings; the one whose two folders both exist is
used, and a folder holding both spellings is refused as ambiguous (set `a`, `b` and
`alternates=()` to choose).

Reading a pair: A becomes grey (a colour A is converted to its luma); B becomes RGB: a grey B is
JET-mapped where the layout says `jet` (CT's MRI, ADNI's PET) or else kept grey (R = G = B); a
colour B where `jet` asks for a grey one is refused with an explanation. A B of another size than
its A is resized to A's size; both are resized to a requested size (training's image_size,
`difffccf fuse --resize`) or else kept at A's, then scaled to [-1, 1]: a [H, W, 1] and
b [H, W, 3] in YCrCb, float32.

With a misaligned generated set, `<folder>/displacement/<stem>.npy` holds the true field of
each pair (see data/misalign.py for the convention).
"""

import dataclasses
import os

import numpy as np

from difffccf_jax import color
from difffccf_jax.data import images
from difffccf_jax.errors import UserError

DISPLACEMENT_FOLDER = "displacement"
MAX_LISTED_NAMES = 10


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one task's pairs live under the data root and how its B images are coloured."""
    task: str
    folder: str
    a: str
    b: str
    b_is_color: bool  # the published B images are colour (the generator writes them so)
    jet: bool  # JET-map grey B images
    alternates: tuple = ()  # other accepted "A:B" sub-folder spellings, tried after (a, b)

    def spellings(self):
        """[(a, b)] sub-folder name pairs in the order they are tried."""
        others = []
        for text in self.alternates:
            a, sep, b = text.partition(":")
            if not sep or not a or not b:
                raise UserError(f"config.data.layouts.{self.task}.alternates: {text!r} is not "
                                "of the form 'A_FOLDER:B_FOLDER'")
            others.append((a, b))
        return [(self.a, self.b)] + others


@dataclasses.dataclass(frozen=True)
class PairFiles:
    """The files of one pair: its name, the A and B image paths, the true displacement field
    (.npy) when the set has one, else None."""
    name: str
    a: str
    b: str
    displacement: str | None


@dataclasses.dataclass(frozen=True)
class PairedArrays:
    """A loaded set: a [N, H, W, 1] grey and b [N, H, W, 3] YCrCb, float32 in [-1, 1]."""
    a: np.ndarray
    b: np.ndarray
    names: tuple


def layout_from_config(data_config, task):
    """The Layout of `task` from config.data.layouts (UserError for an unknown task)."""
    if task not in data_config.layouts:
        raise UserError(f"unknown task {task!r}; config.data.layouts has "
                        f"{', '.join(sorted(data_config.layouts))}")
    entry = data_config.layouts[task]
    return Layout(task=task, folder=entry.folder, a=entry.a, b=entry.b,
                  b_is_color=bool(entry.b_is_color), jet=bool(entry.jet),
                  alternates=tuple(entry.alternates))


def tasks_from_config(data_config):
    """config.data.tasks, checked: the tasks training draws from, one per epoch (a single task:
    single-task training); the first is fusion's default task."""
    tasks = tuple(data_config.tasks)
    if not tasks or not all(isinstance(task, str) for task in tasks):
        raise UserError(f"config field data.tasks: expected a non-empty tuple of task names, "
                        f"got {data_config.tasks!r}")
    for task in tasks:
        layout_from_config(data_config, task)
    return tasks


def _integer_stem_order(name):
    stem = os.path.splitext(name)[0]
    return (0, int(stem), name) if stem.isdecimal() else (1, 0, name)


def _image_names(folder):
    return {name for name in os.listdir(folder)
            if images.is_image_name(name) and os.path.isfile(os.path.join(folder, name))}


def _listed(names):
    names = sorted(names, key=_integer_stem_order)
    shown = ", ".join(names[:MAX_LISTED_NAMES])
    return shown + (f" and {len(names) - MAX_LISTED_NAMES} more"
                    if len(names) > MAX_LISTED_NAMES else "")


def task_folder(root, layout):
    """`<root>/<layout.folder>`, checked to exist."""
    if not os.path.isdir(root):
        raise UserError(f"data root {root!r} does not exist or is not a folder")
    folder = os.path.join(root, layout.folder)
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: folder of task {layout.task!r} not found (expected "
                        f"sub-folders {layout.a!r} and {layout.b!r}; set "
                        f"config.data.layouts.{layout.task}.folder)")
    return folder


def source_folders(root, layout):
    """(A folder, B folder) of the task, choosing among the layout's spellings."""
    folder = task_folder(root, layout)
    spellings = layout.spellings()
    found = [(a, b) for a, b in spellings
             if os.path.isdir(os.path.join(folder, a)) and os.path.isdir(os.path.join(folder, b))]
    if not found:
        wanted = " or ".join(f"{a!r} and {b!r}" for a, b in spellings)
        raise UserError(f"{folder}: expected sub-folders {wanted} (set "
                        f"config.data.layouts.{layout.task}.a / .b)")
    if len(found) > 1:
        raise UserError(f"{folder}: ambiguous layout, both "
                        + " and ".join(f"{a}/{b}" for a, b in found)
                        + f" exist; set config.data.layouts.{layout.task}.a, .b and "
                          "alternates=() to choose")
    a, b = found[0]
    return os.path.join(folder, a), os.path.join(folder, b)


def match_pairs(root, layout):
    """([PairFiles] of the names in both the A and the B folder, in integer-stem order,
    {name: reason} of the names in one folder only); UserError for a missing folder or an empty
    set."""
    a_folder, b_folder = source_folders(root, layout)
    a_names, b_names = _image_names(a_folder), _image_names(b_folder)
    if not a_names and not b_names:
        raise UserError(f"{a_folder} and {b_folder} hold no images "
                        f"({', '.join(images.IMAGE_EXTENSIONS)})")
    unmatched = {name: f"no B image: {os.path.join(b_folder, name)} not found"
                 for name in a_names - b_names}
    unmatched.update({name: f"no A image: {os.path.join(a_folder, name)} not found"
                      for name in b_names - a_names})
    displacement_folder = os.path.join(os.path.dirname(a_folder), DISPLACEMENT_FOLDER)
    pairs = []
    for name in sorted(a_names & b_names, key=_integer_stem_order):
        field = os.path.join(displacement_folder, os.path.splitext(name)[0] + ".npy")
        pairs.append(PairFiles(name=name, a=os.path.join(a_folder, name),
                               b=os.path.join(b_folder, name),
                               displacement=field if os.path.isfile(field) else None))
    return pairs, dict(sorted(unmatched.items(), key=lambda item: _integer_stem_order(item[0])))


def list_pairs(root, layout):
    """[PairFiles] of the task in integer-stem order; UserError for a missing folder, an empty
    set, or A and B names that do not match (the unmatched names are listed)."""
    pairs, unmatched = match_pairs(root, layout)
    if unmatched:
        a_folder, b_folder = source_folders(root, layout)
        a_only = [name for name, reason in unmatched.items() if reason.startswith("no B")]
        b_only = [name for name in unmatched if name not in a_only]
        parts = []
        if a_only:
            parts.append(f"only in {a_folder}: {_listed(a_only)}")
        if b_only:
            parts.append(f"only in {b_folder}: {_listed(b_only)}")
        raise UserError("A and B file names do not match; " + "; ".join(parts))
    return pairs


def _grey_source(image):
    """uint8 [H, W] of an A image: colour is converted to its luma."""
    if image.ndim == 2:
        return image
    if images.channels_equal(image):
        return image[..., 0]
    return color.to_uint8(color.rgb_to_grey(image))[..., 0]


def _colour_source(image, path, layout):
    """uint8 [H, W, 3] RGB of a B image, JET-mapping a grey one where the layout says so."""
    grey = image if image.ndim == 2 else (image[..., 0] if images.channels_equal(image) else None)
    if grey is None:
        if layout.jet:
            raise UserError(f"{path}: B image is colour, but task {layout.task!r} expects a "
                            "grey image to JET-map; set config.data.layouts."
                            f"{layout.task}.jet=False to use its colours as they are")
        return image
    if layout.jet:
        return color.apply_colormap(grey[..., None], "jet")
    return np.repeat(grey[..., None], 3, axis=-1)


NOTE_16_BIT, NOTE_GREY_B = "16-bit", "grey B"


def pair_notes(pair, layout, b_image=None):
    """The conversions of one pair a user may not expect, a subset of {NOTE_16_BIT,
    NOTE_GREY_B}: 16-bit images scaled to 8 bits, a grey B where the task expects colour.
    b_image: the B image as read (read here when not given)."""
    notes = set()
    if images.is_16_bit(pair.a) or images.is_16_bit(pair.b):
        notes.add(NOTE_16_BIT)
    if not layout.jet and _is_grey(images.read_image(pair.b) if b_image is None else b_image):
        notes.add(NOTE_GREY_B)
    return frozenset(notes)


def notes_lines(notes_by_name, layout):
    """One line per kind of note of `pair_notes` ({name: notes}), naming the pairs."""
    def listed(names):
        return f"{len(names)} pair{'s' if len(names) > 1 else ''} ({_listed(set(names))})"

    deep = [name for name, notes in notes_by_name.items() if NOTE_16_BIT in notes]
    grey = [name for name, notes in notes_by_name.items() if NOTE_GREY_B in notes]
    lines = []
    if deep:
        lines.append(f"note: {listed(deep)} with 16-bit images, scaled to 8 bits (levels / 257)")
    if grey:
        lines.append(f"note: {listed(grey)} with a grey B where task {layout.task!r} expects "
                     "colour: B gives no colour to the fused image")
    return tuple(lines)


def input_notes(pairs, layout):
    """One line per kind of input a user may not expect to be converted, naming the pairs:
    16-bit images scaled to 8 bits, and grey B images where the task expects colour (their
    fusion has no colour from B). Empty when there are none."""
    return notes_lines({pair.name: pair_notes(pair, layout) for pair in pairs}, layout)


def _is_grey(image):
    return image.ndim == 2 or images.channels_equal(image)


def read_pair_uint8(pair, layout, image_size=None):
    """(a uint8 [H, W, 1] grey, b uint8 [H, W, 3] RGB) of one pair: at A's own size (image_size
    None; a B of another size is resized to it), or both resized to image_size (S for S x S, or
    (H, W))."""
    return sources_uint8(images.read_image(pair.a), images.read_image(pair.b), layout,
                         image_size, pair.b)


def sources_uint8(a_image, b_image, layout, image_size=None, b_name="B"):
    """(a uint8 [H, W, 1] grey, b uint8 [H, W, 3] RGB) of a pair's images as read (uint8
    [H, W] or [H, W, 3]; sizes as in `read_pair_uint8`); b_name names B in errors."""
    size = a_image.shape[:2] if image_size is None else image_size
    a = images.resize(_grey_source(a_image), size)
    b = _colour_source(images.resize(b_image, size), b_name, layout)
    return a[..., None], b


def to_model_inputs(a, b_rgb, xp=np, conversion=color.CONVERSION_FLOAT):
    """uint8 a [..., 1] grey and b_rgb [..., 3] -> float32 (a, b YCrCb) in [-1, 1]; B converted
    by `conversion` (`color.rgb_uint8_to_ycrcb_levels`)."""
    a = color.to_unit(xp.asarray(a).astype(xp.float32), xp=xp)
    b = color.to_unit(color.rgb_uint8_to_ycrcb_levels(b_rgb, conversion, xp=xp), xp=xp)
    return a, b


def read_pair(pair, layout, image_size=None, conversion=color.CONVERSION_FLOAT):
    """(a [H, W, 1], b [H, W, 3] YCrCb) float32 in [-1, 1] of one pair (sizes as in
    `read_pair_uint8`; B's conversion as in `to_model_inputs`)."""
    return to_model_inputs(*read_pair_uint8(pair, layout, image_size), conversion=conversion)


def load_pairs(root, layout, image_size):
    """PairedArrays of every pair of the task, in integer-stem order."""
    pairs = list_pairs(root, layout)
    a = np.empty((len(pairs), image_size, image_size, 1), np.float32)
    b = np.empty((len(pairs), image_size, image_size, 3), np.float32)
    for index, pair in enumerate(pairs):
        a[index], b[index] = read_pair(pair, layout, image_size)
    return PairedArrays(a=a, b=b, names=tuple(pair.name for pair in pairs))


def read_displacement(pair, image_size):
    """[S, S, 2] float32 true displacement of a pair (pixels at S = image_size), resampled and
    rescaled when the stored field has another size; UserError when missing or malformed."""
    if pair.displacement is None:
        raise UserError(f"pair {pair.name!r} has no displacement field ({DISPLACEMENT_FOLDER}/"
                        f"{os.path.splitext(pair.name)[0]}.npy next to its A and B folders)")
    try:
        field = np.load(pair.displacement)
    except (OSError, ValueError) as error:
        raise UserError(f"{pair.displacement}: unreadable displacement field ({error})") from error
    if field.ndim != 3 or field.shape[2] != 2 or field.shape[0] != field.shape[1]:
        raise UserError(f"{pair.displacement}: expected a square [H, W, 2] field, got shape "
                        f"{field.shape}")
    field = field.astype(np.float32)
    if field.shape[0] == image_size:
        return field
    factor = image_size / field.shape[0]
    return np.stack([images.resize(field[..., c], image_size) * factor for c in range(2)],
                    axis=-1).astype(np.float32)
