"""Realistic paired data for the five tasks, written in the published layout
(docs/method.md section 2).

| task  | A                         | B                                             |
|-------|---------------------------|-----------------------------------------------|
| pet   | MRI (T1 or T2)            | PET, colour-mapped on a black background      |
| spect | MRI (T2)                  | SPECT (coarser, noisier), colour-mapped       |
| ct    | CT (brain window)         | MRI (T1 or T2), grey: the loader JET-maps it  |
| adni  | MRI (T1)                  | PET, grey: the loader JET-maps it             |
| gfp   | phase contrast            | GFP fluorescence, green                       |

Brain tasks share one anatomy per pair, cut from a real MRI template (data/template.py; the
default) or drawn as a synthetic phantom (data/phantom.py, on request); GFP one cell
culture (data/cells.py). With the template, emission images are coloured as clinics show them
(data/colormaps.py): PET through the hot map, SPECT through the rainbow or the hot map (drawn per
pair); the phantom keeps its JET-on-black PET and hot SPECT.
Pair i of a task depends only on (seed, task, i): a set of N pairs is a prefix of a larger one.
With misalignment, B's signal is moved by a small random affine plus elastic motion before it
is colour-mapped (data/misalign.py; drawn from its own random stream, so the A and B content
equals that of the aligned set) and the field that realigns it is saved as
`<folder>/displacement/<stem>.npy`: [H, W, 2] float32, pixels, channel 0 along x and 1 along y;
sampling the moved B at (x + dx, y + dy) gives back the aligned B (up to interpolation), the
convention of `warping.warp`.

Each pair has a clean twin (`noise=False`; `write_task`'s `clean_twins_out`): the same anatomy,
uptake, contrast, colour map and misalignment field, made by the same random draws, without the
scanner's (or the camera's) noise, on the noisy image's intensity scale. The fusion of the
clean twin is the reference against which denoising is measured (evaluation/denoising.py).
"""

import dataclasses
import functools
import os

import numpy as np

from difffccf_jax import color, files
from difffccf_jax.data import cells, colormaps, images, misalign, phantom, template
from difffccf_jax.data.layouts import DISPLACEMENT_FOLDER
from difffccf_jax.errors import UserError

TASKS = ("pet", "spect", "ct", "gfp", "adni")
ANATOMIES = ("template", "phantom")
SPECT_MAPS = ("rainbow", "hot")  # template SPECT: one drawn per pair
MIN_SIZE = 16
# B's misalignment: (rng, size, strength) -> misalign.Motion
MOTIONS = dict(affine=misalign.random_motion,
               head=lambda rng, size, strength: misalign.head_motion(rng, size))


@dataclasses.dataclass(frozen=True)
class GeneratedPair:
    """One pair: a uint8 [S, S] grey; b uint8 [S, S, 3] RGB (pet, spect, gfp) or [S, S] grey
    (ct, adni); b_aligned, B before misalignment (b itself without it); displacement, the
    [S, S, 2] float32 field realigning b (None without misalignment)."""
    a: np.ndarray
    b: np.ndarray
    b_aligned: np.ndarray
    displacement: np.ndarray | None


def _grey(values):
    """Grey functional images are written as they are: [S, S] on 0..1."""
    return values


# The MNI152 template ships with a core dependency (nilearn); the phantom is a choice, never a
# silent fallback.
DEFAULT_ANATOMY = "template"


# Each task renders (A, B's signal, how the signal is shown): A and the signal [S, S] on 0..1.
# Misalignment moves the signal (the subject moved between the scans) before it is shown.
# `brain` is the anatomy's module (template or phantom: the same random_slice and render_*);
# `noise` False renders the clean twins (the same draws, no scanner noise).
def _emission_display(brain, task, rng):
    """The colour map of a pet or spect B: the phantom's original ones, or the clinical ones
    for the template (SPECT's drawn from SPECT_MAPS after everything else)."""
    if brain is phantom:
        name = "jet_on_black" if task == "pet" else "hot"
    else:
        name = "hot" if task == "pet" else SPECT_MAPS[rng.integers(len(SPECT_MAPS))]
    return functools.partial(colormaps.colorize, name=name)


def _pet(brain, rng, size, noise):
    anatomy = brain.random_slice(rng, size)
    mri = brain.render_mri(anatomy, rng, rng.choice(["T1", "T2"]), noise=noise)
    return (mri, brain.render_pet(anatomy, rng, noise=noise),
            _emission_display(brain, "pet", rng))


def _spect(brain, rng, size, noise):
    anatomy = brain.random_slice(rng, size)
    mri = brain.render_mri(anatomy, rng, "T2", noise=noise)
    return (mri, brain.render_spect(anatomy, rng, noise=noise),
            _emission_display(brain, "spect", rng))


def _ct(brain, rng, size, noise):
    anatomy = brain.random_slice(rng, size)
    ct = brain.render_ct(anatomy, rng, noise=noise)
    return ct, brain.render_mri(anatomy, rng, rng.choice(["T1", "T2"]), noise=noise), _grey


def _adni(brain, rng, size, noise):
    anatomy = brain.random_slice(rng, size)
    mri = brain.render_mri(anatomy, rng, "T1", noise=noise)
    return mri, brain.render_pet(anatomy, rng, noise=noise), _grey


def _gfp(brain, rng, size, noise):
    del brain  # a cell culture, the same for either anatomy
    culture = cells.random_culture(rng, size)
    phase = cells.render_phase_contrast(culture, rng, noise=noise)
    return phase, cells.render_fluorescence(culture, rng, noise=noise), cells.gfp_to_rgb


RENDERERS = dict(pet=_pet, spect=_spect, ct=_ct, gfp=_gfp, adni=_adni)
BRAINS = dict(template=template, phantom=phantom)


def _check_motion(motion):
    if motion not in MOTIONS:
        raise UserError(f"unknown motion {motion!r}; expected one of {', '.join(MOTIONS)}")


def _check(task, size, seed, anatomy):
    if anatomy not in ANATOMIES:
        raise UserError(f"unknown anatomy {anatomy!r}; expected one of {', '.join(ANATOMIES)}")
    if anatomy == "template" and task != "gfp":
        template.check_available()
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if size < MIN_SIZE:
        raise UserError(f"image size {size} is too small; expected at least {MIN_SIZE}")
    if seed < 0:
        raise UserError(f"seed {seed} must be a non-negative integer")


def make_pair(task, size, seed, index, misalign_b=False, motion_strength=1.0,
              anatomy="phantom", noise=True, motion="affine"):
    """Generates pair `index` of `task` at size x size for `seed` (a GeneratedPair) on an
    `anatomy` of ANATOMIES; with `misalign_b`, B moved by a random `motion` of MOTIONS: 'affine'
    (misalign.random_motion of `motion_strength`) or 'head' (misalign.head_motion: rigid plus
    elastic, a mean end-point error of 2-4 px at any size); with noise=False, the pair's clean
    twin (the same pair without scanner noise, the same displacement field)."""
    _check(task, size, seed, anatomy)
    _check_motion(motion)
    streams = [seed, TASKS.index(task), index]
    a, signal, show = RENDERERS[task](BRAINS[anatomy], np.random.default_rng(streams + [0]),
                                      size, noise)
    a = color.to_uint8(a * 255.0)
    b_aligned = color.to_uint8(show(signal) * 255.0)
    if not misalign_b:
        return GeneratedPair(a=a, b=b_aligned, b_aligned=b_aligned, displacement=None)
    motion = MOTIONS[motion](np.random.default_rng(streams + [1]), size, motion_strength)
    moved, displacement = misalign.apply_motion(signal, motion)
    return GeneratedPair(a=a, b=color.to_uint8(show(moved) * 255.0), b_aligned=b_aligned,
                         displacement=displacement)


def _task_folders(out, layout, option):
    """(A folder, B folder, field folder) of `layout` under `out`; UserError when the A or B
    folder already holds images (`option` names the argument in the message)."""
    folder = os.path.join(out, layout.folder)
    a_folder, b_folder = os.path.join(folder, layout.a), os.path.join(folder, layout.b)
    for path in (a_folder, b_folder):
        if os.path.isdir(path) and any(images.is_image_name(name) for name in os.listdir(path)):
            raise UserError(f"{path} already holds images; write to an empty {option} (a set "
                            "must not mix pairs of different runs)")
    return a_folder, b_folder, os.path.join(folder, DISPLACEMENT_FOLDER)


def _make_folders(out, folders, misalign_b):
    """Creates the A and B folders (and the field folder with misalign_b) under `out`."""
    try:
        for path in folders[:2] + (folders[2:] if misalign_b else ()):
            os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create output folder under {out!r}: {error}") from error


def _pair_files(folders, index, pair):
    """[(path, array)] of pair `index` (0-based) in folders (A, B, field): B and the field
    first, A last."""
    a_folder, b_folder, field_folder = folders
    name = f"{index + 1}.png"
    outputs = [(os.path.join(b_folder, name), pair.b)]
    if pair.displacement is not None:
        outputs.append((os.path.join(field_folder, f"{index + 1}.npy"), pair.displacement))
    outputs.append((os.path.join(a_folder, name), pair.a))
    return outputs


def write_task(out, layout, num, size, seed, misalign_b=False, motion_strength=1.0,
               anatomy="phantom", clean_twins_out=None, motion="affine"):
    """Writes pairs 1..num of `layout.task` under `out` in the published layout; returns the
    task folder, which must not hold images yet. With `clean_twins_out`, another data root,
    the clean twin of every pair (make_pair's noise=False: same names, same displacement
    fields) goes there in the same layout. Each pair is written all-or-nothing, twin included
    (the clean twin first, then the noisy pair; B and the field before A)."""
    _check(layout.task, size, seed, anatomy)
    misalign.check_strength(motion_strength)
    _check_motion(motion)
    if num < 1:
        raise UserError(f"--num {num}: expected at least one pair")
    if clean_twins_out is not None and (os.path.realpath(clean_twins_out)
                                        == os.path.realpath(out)):
        raise UserError(f"--clean-twins {clean_twins_out}: expected another folder than --out "
                        "(the clean twins have the same names as the noisy pairs)")
    # (data root, its folders, noise): the clean twins first, as they are written first
    targets = [(out, _task_folders(out, layout, "--out"), True)]
    if clean_twins_out is not None:
        targets.insert(0, (clean_twins_out, _task_folders(clean_twins_out, layout,
                                                          "--clean-twins folder"), False))
    for root, folders, _ in targets:
        _make_folders(root, folders, misalign_b)
    for index in range(num):
        outputs = []
        for _, folders, noise in targets:
            pair = make_pair(layout.task, size, seed, index, misalign_b, motion_strength,
                             anatomy, noise=noise, motion=motion)
            outputs += _pair_files(folders, index, pair)
        files.write_files(outputs)
    return os.path.join(out, layout.folder)
