"""Does the network register? Generated misaligned pairs -> time-bounded training -> fusion of
held-out pairs with registration off and on -> the registration table and the fusion metrics.

    difffccf registration --out registration_out --task pet

The held-out pairs' B is moved by the generator's head motion (`misalign.head_motion`: rigid plus
elastic, a mean end-point error of 2-4 px) and its true field is saved; the training never reads
it (the registration is unsupervised), the report compares the predicted field with it. Written
into --out: `report.md`, `summary.json` (the same numbers), the data (and the held-out pairs
before the motion, `data/aligned`), the checkpoint, both fused folders (with extras: the field,
its warped grid and the warped B), two ceilings: the model's fusion of B warped by its true
field (`data/true_field`, `fused_true_field`) and of the aligned pairs (`fused_aligned`), the
metric tables against the pairs as given and as aligned (with the classical rules applied to the
pairs as given in both), and
`figures/registration.png` (per pair: A, B as given, B registered, the warped grid).
"""

import dataclasses
import json
import os
import time

import numpy as np

from difffccf_jax import files
from difffccf_jax.errors import UserError
from difffccf_jax.tools import experiment
UNREGISTERED = "diff-fccf"  # B fused as given
REGISTERED = "diff-fccf-registered"  # B warped by the predicted field first
# Ceilings, scored only against the pairs before the motion: the model fusing B warped by its
# true field (registration off; a perfect field, resampling included), and fusing the pairs
# before the motion (no resampling either)
TRUE_FIELD = "diff-fccf-true-field"
ALIGNED = "diff-fccf-on-aligned-pairs"
SUMMARY_NAME = "summary.json"
# The check's targets: the mean end-point error after warping at most this share of the error
# before, and a Pearson correlation of true and predicted mean shifts of at least MIN_PEARSON
MAX_ERROR_RATIO = {"pet": 0.5, "spect": 0.6}
MIN_PEARSON = 0.8
BUDGET_CHECK_STEPS = 8  # training steps between two checks of the time budget


def check_config(task, image_size, minutes, data_root, diffusion_crop,
                 registration_size, sampling_steps, refine_steps):
    """The tiny config (`experiment.training_config`) set up for the check and a training time budget
    of `minutes` (checked every BUDGET_CHECK_STEPS steps): whole pairs reach the step
    (data.crop_size 0), the registration pass sees them shrunk to registration_size, the
    diffusion rows a random diffusion_crop window; refine_steps of refinement at sampling."""
    config = experiment.training_config(task, image_size, 1, data_root, train_pairs=1,
                                        sampling_steps=sampling_steps)
    config.train.max_minutes = float(minutes)
    config.loss.diffusion_crop = diffusion_crop
    config.loss.registration_size = registration_size
    # The time budget ends training, checked after every epoch: short epochs end it on time.
    config.train.steps_per_epoch = BUDGET_CHECK_STEPS
    config.train.epochs = 10000
    config.train.checkpoint_every_epochs = 10000
    config.sampling.refine_steps = refine_steps
    return config


def generate(out, task, train_pairs, test_pairs, image_size, seed, anatomy):
    """Training and held-out pairs with B moved by the head motion, and the held-out pairs as
    they were before the motion (the same A and B content); returns the data roots
    {'train', 'test', 'aligned'} and the task's layout."""
    layout = experiment.task_layout(task)
    moved = dict(misalign_b=True, motion="head")
    roots = experiment.write_splits(out, layout, image_size, anatomy, [
        ("train", train_pairs, seed, moved), ("test", test_pairs, seed + 1, moved),
        ("aligned", test_pairs, seed + 1, dict(misalign_b=False, motion="head"))])
    return roots, layout


def write_true_field_pairs(test_root, out_root, layout, interpolation):
    """A copy of the held-out pairs under `out_root` with each B warped by its own true field as
    the sampler warps (`sampling.warp_b`, `interpolation`): what a perfect registration gives B.
    The true field is used for evaluation only."""
    import shutil

    import jax.numpy as jnp

    from difffccf_jax.data import layouts
    from difffccf_jax.inference import sampling

    shutil.copytree(test_root, out_root)
    for pair in layouts.list_pairs(out_root, layout):
        _, b = layouts.read_pair(pair, layout)
        field = layouts.read_displacement(pair, b.shape[0])
        warped = sampling.warp_b(jnp.asarray(b)[None], jnp.asarray(field)[None], interpolation)
        files.write_files([(pair.b, np.asarray(sampling.ycrcb_unit_to_rgb_uint8(warped))[0])])


def pearson(x, y):
    """Pearson correlation of two sequences; nan when either is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def registration_summary(rows, task):
    """The acceptance numbers of `experiment.registration_rows` rows: mean end-point error before and
    after, their ratio, the Pearson correlation of true and predicted mean shifts in x and in y,
    and whether the check's targets are met (MAX_ERROR_RATIO for the task, MIN_PEARSON)."""
    before, after = experiment.registration_errors(rows)
    true = np.array([row.true_shift for row in rows])
    predicted = np.array([row.predicted_shift for row in rows])
    summary = dict(pairs=len(rows), before_px=before, after_px=after, ratio=after / before,
                   pearson_x=pearson(true[:, 0], predicted[:, 0]),
                   pearson_y=pearson(true[:, 1], predicted[:, 1]),
                   max_ratio=MAX_ERROR_RATIO.get(task), min_pearson=MIN_PEARSON)
    summary["meets_ratio"] = bool(summary["max_ratio"] is not None
                                  and summary["ratio"] <= summary["max_ratio"])
    summary["meets_pearson"] = bool(min(summary["pearson_x"], summary["pearson_y"])
                                    >= MIN_PEARSON)
    return summary


def summary_lines(summary):
    """The acceptance numbers as two sentences."""
    verdict = "meets" if summary["meets_ratio"] and summary["meets_pearson"] else "misses"
    return (f"Mean end-point error over {summary['pairs']} held-out pairs: "
            f"{summary['before_px']:.3f} px before, {summary['after_px']:.3f} px after "
            f"({summary['ratio']:.2f} x; at most {summary['max_ratio']} x required). Pearson "
            f"correlation of true and predicted mean shift: {summary['pearson_x']:.2f} in x, "
            f"{summary['pearson_y']:.2f} in y (at least {MIN_PEARSON} required). This run "
            f"{verdict} the check's targets.")


def field_variants(checkpoint, root, layout, image_size, refine_steps):
    """What the network and the refinement each contribute, on the held-out pairs: the fields
    of the checkpoint's model and sampling settings, as [N, H, W, 2] NumPy arrays, named
    'network alone', 'network + N refinement steps' (what the sampler uses: with its setting
    refine_from_no_warp, the better by loss of this start and no warp), and, each refined from
    one start only, 'N refinement steps from the network alone' and 'N refinement steps from no
    warp'."""
    import jax.numpy as jnp

    from difffccf_jax import compilation
    from difffccf_jax.data import layouts
    from difffccf_jax.model import checkpoints, registration, settings, unet
    from difffccf_jax.model.refinement import refine_field

    config, params = checkpoints.load_for_inference(checkpoint)
    model = unet.model_from_config(config.model)
    refinement = settings.refinement_settings(config)
    loaded = layouts.load_pairs(root, layout, image_size)
    a, b = jnp.asarray(loaded.a), jnp.asarray(loaded.b)

    @compilation.jit
    def network(a, b):
        return registration.predict_field(
            lambda x, t: model.apply({"params": params}, x, t, train=False), a, b,
            settings.loss_settings(config).registration_size)

    one_start = dataclasses.replace(refinement, from_no_warp=False)
    refine = compilation.jit(refine_field, static_argnums=3)
    predicted = network(a, b)
    variants = {"network alone": np.asarray(predicted),
                f"network + {refine_steps} refinement steps": np.asarray(
                    refine(a, b, predicted, refinement))}
    if refinement.from_no_warp:
        variants[f"{refine_steps} refinement steps from the network alone"] = np.asarray(
            refine(a, b, predicted, one_start))
    variants[f"{refine_steps} refinement steps from no warp"] = np.asarray(
        refine(a, b, jnp.zeros_like(predicted), one_start))
    return variants


def variant_table(variants, pairs, image_size):
    """Markdown: per field variant, the mean end-point error and the Pearson correlations."""
    from difffccf_jax.data import layouts

    true = np.stack([layouts.read_displacement(pair, image_size) for pair in pairs])
    before = float(np.mean(np.linalg.norm(true, axis=-1)))
    lines = ["| field | error after (px) | ratio to before | Pearson x | Pearson y |",
             "|---|---|---|---|---|",
             f"| none (B as given) | {before:.3f} | 1.00 | | |"]
    for name, field in variants.items():
        after = float(np.mean(np.linalg.norm(true - field, axis=-1)))
        shifts, predicted = true.mean(axis=(1, 2)), field.mean(axis=(1, 2))
        lines.append(f"| {name} | {after:.3f} | {after / before:.2f} | "
                     f"{pearson(shifts[:, 0], predicted[:, 0]):.2f} | "
                     f"{pearson(shifts[:, 1], predicted[:, 1]):.2f} |")
    return "\n".join(lines)


def registration_figure(path, pairs, layout, registered_dir, image_size, limit=6):
    """Per pair (at most `limit`): A, B as given, B registered, the warped grid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from difffccf_jax.data import images, layouts

    shown = pairs[:limit]
    figure, axes = plt.subplots(len(shown), 4, figsize=(12, 3 * len(shown)), squeeze=False)
    for row, pair in zip(axes, shown):
        extras = os.path.join(registered_dir, "extras", os.path.splitext(pair.name)[0])
        a, b = layouts.read_pair_uint8(pair, layout, image_size)
        panels = (("A", a[..., 0], "gray"), ("B as given", b, None),
                  ("B registered", images.read_image(os.path.join(extras, "warped_b.png")), None),
                  ("predicted field", images.read_image(
                      os.path.join(extras, "deformation_grid.png")), None))
        for axis, (title, image, cmap) in zip(row, panels):
            axis.imshow(image, cmap=cmap, vmin=0, vmax=255)
            axis.set_title(f"{pair.name}: {title}", fontsize=9)
            axis.axis("off")
    figure.tight_layout()
    experiment.save_figure(figure, path, dpi=80)


def run_registration_check(out, task="pet", minutes=12.0, image_size=128, train_pairs=256,
                           test_pairs=12, diffusion_crop=32, registration_size=32,
                           sampling_steps=30, refine_steps=50, seed=0,
                           command="difffccf registration"):
    """Runs every stage into `out` (new or empty); returns the summary dict (also written as
    summary.json, with report.md)."""
    from difffccf_jax.data import generator, layouts
    from difffccf_jax.evaluation import scoring
    from difffccf_jax.inference import fusion
    from difffccf_jax.model import settings
    from difffccf_jax.training import train

    if os.path.isdir(out) and os.listdir(out):
        raise UserError(f"--out {out!r} is not empty; choose a new folder")
    if test_pairs < 2:
        raise UserError(f"--test-pairs {test_pairs}: a correlation needs at least 2 pairs")
    timings, started = {}, time.perf_counter()
    anatomy = generator.DEFAULT_ANATOMY
    print(f"[registration] generating {train_pairs} training and {test_pairs} held-out {task} "
          f"pairs of {image_size} px ({anatomy} anatomy, head motion)", flush=True)
    roots, layout = generate(out, task, train_pairs, test_pairs, image_size, seed, anatomy)
    timings["data"] = time.perf_counter() - started

    print(f"[registration] training for {minutes:g} min", flush=True)
    stage = time.perf_counter()
    workdir = os.path.join(out, "training")
    config = check_config(task, image_size, minutes, roots["train"],
                          diffusion_crop, registration_size, sampling_steps, refine_steps)
    state = train.fit(config, workdir)
    timings["train"] = time.perf_counter() - stage
    checkpoint = os.path.join(workdir, train.CHECKPOINT_DIR)

    print("[registration] fusing the held-out pairs with registration off and on", flush=True)
    stage = time.perf_counter()
    folders = {UNREGISTERED: os.path.join(out, "fused"),
               REGISTERED: os.path.join(out, "fused_registered")}
    for name, folder in folders.items():
        fusion.fuse_folder(checkpoint, folder, data=roots["test"], task=task,
                           register=name == REGISTERED, save_extras=True).check()
    roots["true_field"] = os.path.join(out, "data", "true_field")
    write_true_field_pairs(roots["test"], roots["true_field"], layout,
                           settings.sampler_settings(config).warp_interpolation)
    ceilings = {TRUE_FIELD: os.path.join(out, "fused_true_field"),
                ALIGNED: os.path.join(out, "fused_aligned")}
    for name, data in ((TRUE_FIELD, roots["true_field"]), (ALIGNED, roots["aligned"])):
        fusion.fuse_folder(checkpoint, ceilings[name], data=data, task=task,
                           register=False).check()
    timings["fuse"] = time.perf_counter() - stage

    # The metrics compare the fused image with its sources: with the pair as given (B
    # misaligned), and with the pair as it was before the motion, the one a registration aims at.
    # The classical rules fuse the pairs as given (what a user has) in both tables: applied to
    # the aligned pairs they would be an oracle.
    stage = time.perf_counter()
    tables, means = {}, {}
    for reference, methods in (("test", folders), ("aligned", {**folders, **ceilings})):
        evaluation_dir = os.path.join(out, f"evaluation_{reference}")
        tables[reference], _ = scoring.evaluate_folders(
            roots[reference], layout, methods, evaluation_dir, with_baselines=True,
            baseline_data=roots["test"])
        with open(os.path.join(evaluation_dir, "evaluation.json"), encoding="utf-8") as file:
            means[reference] = experiment.metric_means(json.load(file))
    pairs = layouts.list_pairs(roots["test"], layout)
    rows = experiment.registration_rows(pairs, folders[REGISTERED], image_size)
    summary = registration_summary(rows, task)
    variants = variant_table(field_variants(checkpoint, roots["test"], layout, image_size,
                                            refine_steps), pairs, image_size)
    os.makedirs(os.path.join(out, "figures"), exist_ok=True)
    registration_figure(os.path.join(out, "figures", "registration.png"), pairs, layout,
                        folders[REGISTERED], image_size)
    timings["evaluate"] = time.perf_counter() - stage

    summary.update(task=task, anatomy=anatomy, image_size=image_size, train_pairs=train_pairs,
                   test_pairs=test_pairs, diffusion_crop=diffusion_crop,
                   registration_size=registration_size, refine_steps=refine_steps,
                   refine_learning_rate=float(config.sampling.refine_learning_rate),
                   refine_strain=float(config.sampling.refine_strain),
                   refine_from_no_warp=bool(config.sampling.refine_from_no_warp),
                   train_steps=int(state.step), train_minutes=timings["train"] / 60,
                   stage_seconds=timings, metrics=means, command=command, variants=variants,
                   per_pair=experiment.registration_records(rows))
    files.write_text(os.path.join(out, SUMMARY_NAME),
                     json.dumps(summary, indent=2, allow_nan=False) + "\n")
    stage_times = ", ".join(f"{name} {seconds:.0f}" for name, seconds in timings.items())
    starts = (", from the network's field and from no warp, keeping the result of lower loss"
              if config.sampling.refine_from_no_warp else "")
    text = f"""# Registration check

Command: `{command}`

{train_pairs} training and {test_pairs} held-out generated {task} pairs of {image_size} x
{image_size} ({anatomy} anatomy), B moved by the head motion (rigid plus elastic, a mean
end-point error of 2-4 px) with its true field saved for this report only. The tiny
configuration trained for {summary['train_steps']} steps ({summary['train_minutes']:.1f} min):
the registration pass on the whole pairs shrunk to {registration_size} px, the diffusion rows on
random {diffusion_crop} px windows. At sampling, the network's field was refined by
{refine_steps} Adam steps of {config.sampling.refine_learning_rate:g} px of the same loss plus the
strain term, weight {config.sampling.refine_strain:g}{starts} (sampling.refine_steps,
refine_learning_rate, refine_strain, refine_from_no_warp). Stage times (s): {stage_times}.

## Registration (held-out pairs)

{summary_lines(summary)}

{experiment.registration_table(rows)}

What the network and the refinement each contribute (the same pairs and checkpoint; the second
row is the field the sampler used):

{variants}

![registration](figures/registration.png)

## Fusion metrics, registration off and on, and the classical rules

The classical rules (`difffccf evaluate --baselines`) fuse the held-out pairs as given (B
misaligned, as a user has them) in both tables. Scored against the held-out pairs as given (the
metrics then reward a fusion that keeps B where it was):

{tables['test']}

Scored against the same pairs before the motion (B aligned with A; `data/aligned`; the rules'
images are those of the table above, not the rules applied to the aligned pairs). Two
ceilings, registration off: `{TRUE_FIELD}` fuses B warped by its true field (`data/true_field`;
a perfect registration, resampling included) and `{ALIGNED}` the pairs before the motion. A
no-reference metric (EN, SD, SF) that is lower there than with B misaligned rewards the
misalignment's doubled edges, not the fusion:

{tables['aligned']}
"""
    files.write_text(os.path.join(out, "report.md"), text)
    print(experiment.registration_table(rows))
    print(variants)
    print(summary_lines(summary))
    print(f"[registration] done in {(time.perf_counter() - started) / 60:.1f} min: "
          f"{os.path.join(out, 'report.md')}", flush=True)
    return summary
