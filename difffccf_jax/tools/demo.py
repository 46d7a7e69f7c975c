"""The demo: generated data -> time-bounded training -> fusion -> evaluation -> report.

Everything the demo shows is computed by the run: it generates a small realistic set of
misaligned pairs (held-out pairs with their true displacement fields), trains the tiny
configuration for a bounded time, fuses the held-out pairs with the respaced hierarchical
sampler, compares with the classical baselines, and writes figures, a `report.md` and its
numbers as `summary.json`.
"""

import os
import time

import numpy as np

from difffccf_jax import files
from difffccf_jax.errors import UserError
from difffccf_jax.tools.experiment import (TINY_CONFIG, data_root, metric_means,
                                           registration_errors, registration_records,
                                           registration_rows, registration_table, save_figure,
                                           task_layout, training_config, write_splits)
STAGES = ("generate data", "train", "fuse", "evaluate", "figures", "report")
METHOD = "diff-fccf"
REGISTERED = "diff-fccf-registered"  # the same model fusing B warped by its predicted field
SUMMARY_NAME = "summary.json"  # the report's numbers, machine-readable
TRAIN_STEPS = 1600  # the demo's training steps (whole epochs of its training pairs)


def announce(index, message, eta_seconds=None):
    """Prints which stage runs now and, when known, when it should end."""
    eta = ""
    if eta_seconds is not None:
        finish = time.strftime("%H:%M:%S", time.localtime(time.time() + eta_seconds))
        eta = f" (about {eta_seconds / 60:.1f} min, until {finish})"
    print(f"[demo {index + 1}/{len(STAGES)}] {STAGES[index]}: {message}{eta}", flush=True)


def config_text(config_spec, overrides):
    """The config file's name and the overrides applied to it, for the report."""
    changed = ", ".join(f"{key}={text}" for key, text in overrides)
    return os.path.basename(config_spec) + (f" (with {changed})" if changed else "")


def generate(out, task, train_pairs, test_pairs, image_size, seed, motion_strength, anatomy):
    """Writes a training and a held-out set of misaligned pairs on `anatomy` (generator
    .ANATOMIES), and the held-out pairs' clean twins (no scanner noise); returns the training,
    held-out and clean-twin data roots and the task's layout."""
    layout = task_layout(task)
    clean = data_root(out, "clean")
    moved = dict(misalign_b=True, motion_strength=motion_strength)
    roots = write_splits(out, layout, image_size, anatomy, [
        ("train", train_pairs, seed, moved),
        ("test", test_pairs, seed + 1, dict(moved, clean_twins_out=clean))])
    return roots["train"], roots["test"], clean, layout


SELECTION_BASELINES = ("a-luminance", "ycrcb-maximum")  # Y rules compared with our F_Y


def selection_pixels(a, warped_b, m1, fused_y):
    """Per-pixel arrays of one pair: (bright [H, W] bool where B's Y exceeds A, m1 [H, W] in
    0..1, {method: |F_Y - max(A_Y, B_Y)| [H, W]} for METHOD and SELECTION_BASELINES).

    a: uint8 [H, W, 1]; warped_b: the B that was fused (as given or registered), uint8 RGB
    [H, W, 3]; m1, fused_y: the mask_m1_y and fused_y extras, uint8 [H, W]."""
    from difffccf_jax import color
    from difffccf_jax.evaluation import baselines

    a_y = np.asarray(a, np.float64)[..., 0]
    b_y = color.rgb_to_grey(np.asarray(warped_b, np.float64))[..., 0]
    target = np.maximum(a_y, b_y)
    lumas = {METHOD: np.asarray(fused_y, np.float64)}
    lumas.update({name: baselines.LUMA_RULES[name](a, warped_b) for name in SELECTION_BASELINES})
    return (b_y > a_y, np.asarray(m1, np.float64) / 255.0,
            {name: np.abs(luma - target) for name, luma in lumas.items()})


def selection_stats(pairs, layout, fused_dir, image_size):
    """Whether the Y fusion selects the brighter source, pooled over every pixel of `pairs`:
    dict(bright_fraction, m1_inside_bright, m1_outside_bright (None for an empty region),
    y_deviation_from_max={method: mean |F_Y - max(A_Y, B_Y)| in levels}), from the fuse
    command's extras (mask_m1_y.png, fused_y.png and warped_b.png, the B that was fused)."""
    from difffccf_jax.data import images, layouts

    bright, m1, deviation = [], [], {}
    for pair in pairs:
        extras = os.path.join(fused_dir, "extras", os.path.splitext(pair.name)[0])
        a, _ = layouts.read_pair_uint8(pair, layout, image_size)
        pair_bright, pair_m1, pair_deviation = selection_pixels(
            a, *(images.read_image(os.path.join(extras, name))
                 for name in ("warped_b.png", "mask_m1_y.png", "fused_y.png")))
        bright.append(pair_bright.ravel())
        m1.append(pair_m1.ravel())
        for name, values in pair_deviation.items():
            deviation.setdefault(name, []).append(values.ravel())
    bright, m1 = np.concatenate(bright), np.concatenate(m1)

    def mean(values):
        return float(np.mean(values)) if values.size else None

    return dict(bright_fraction=float(np.mean(bright)), m1_inside_bright=mean(m1[bright]),
                m1_outside_bright=mean(m1[~bright]),
                y_deviation_from_max={name: float(np.mean(np.concatenate(values)))
                                      for name, values in deviation.items()})


def _printed(value):
    """The value as the metric table prints it (2 decimals), so comparisons agree with it."""
    return float(f"{value:.2f}")


def compare(means, method, rivals):
    """How `method` fares against the best of `rivals` (method names) on each of the 8
    published metrics (all higher is better), at the table's 2 decimals: dict(ahead, level,
    behind, undefined: [metric]) and best {metric: the rival with the highest mean}."""
    from difffccf_jax.evaluation import metrics

    verdict = dict(ahead=[], level=[], behind=[], undefined=[], best={})
    for metric in metrics.PUBLISHED_METRICS:
        ours = means[method].get(metric)
        defined = [name for name in rivals if means[name].get(metric) is not None]
        if ours is None or not defined:
            verdict["undefined"].append(metric)
            continue
        best = max(defined, key=lambda name: means[name][metric])
        verdict["best"][metric] = best
        ours, theirs = _printed(ours), _printed(means[best][metric])
        verdict["ahead" if ours > theirs else "behind" if ours < theirs else "level"].append(
            metric)
    return verdict


def _verdict_words(verdict):
    """'ahead on 2 (SCD, VIF), level on 1 (EN) and behind on 5 (...)' of a `compare` result."""
    keys = ["ahead"] + [key for key in ("level",) if verdict[key]] + ["behind"] + [
        key for key in ("undefined",) if verdict[key]]
    parts = [f"{key} on {len(verdict[key])}"
             + (f" ({', '.join(verdict[key])})" if verdict[key] else "") for key in keys]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def comparison_sentence(comparisons):
    """One sentence from `comparisons` = {'best_baseline': compare(...), 'ycrcb-maximum':
    compare(...)}: on which published metrics our method is ahead of or behind each."""
    from difffccf_jax.evaluation import metrics

    best, rule = comparisons["best_baseline"], comparisons["ycrcb-maximum"]
    return (f"Of the {len(metrics.PUBLISHED_METRICS)} published metrics "
            f"({' '.join(metrics.PUBLISHED_METRICS)}; higher is better, compared at the table's "
            f"two decimals), against the best baseline of each metric {METHOD} is "
            f"{_verdict_words(best)}, and against the ycrcb-maximum rule it is "
            f"{_verdict_words(rule)}.")


def summary_record(info, means, comparisons, selection, registration):
    """The machine-readable summary.json of a run: settings, metric means per method, the
    comparison, the Y selection statistics and the registration errors."""
    before, after = registration_errors(registration)
    settings = ("task", "config", "image_size", "crop_size", "train_pairs", "test_pairs", "train_steps",
                "sampling_steps", "diffusion_steps")
    return dict(
        {key: info[key] for key in settings},
        metrics=means, comparison=comparisons, sentence=comparison_sentence(comparisons),
        selection=selection,
        registration=dict(before_px=before, after_px=after,
                          per_pair=registration_records(registration)))


def pair_figure(path, a, b, fused, mask, grid):
    """One row of five panels: A, B, the fused image, the Y fusion mask, the warped grid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("MRI (A)", a[..., 0], "gray"), ("functional (B)", b, None),
              ("fused", fused, None), ("fusion mask m1", mask, "viridis"),
              ("deformation", grid, None))
    figure, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    for axis, (title, image, cmap) in zip(axes, panels):
        axis.imshow(image, cmap=cmap, vmin=0, vmax=255)
        axis.set_title(title)
        axis.axis("off")
    figure.tight_layout()
    save_figure(figure, path)


def pair_figures(pairs, layout, fused_dir, figure_dir, image_size):
    """A figure per held-out pair; returns their paths."""
    from difffccf_jax.data import images, layouts

    os.makedirs(figure_dir, exist_ok=True)
    paths = []
    for pair in pairs:
        stem = os.path.splitext(pair.name)[0]
        extras = os.path.join(fused_dir, "extras", stem)
        a, b = layouts.read_pair_uint8(pair, layout, image_size)
        path = os.path.join(figure_dir, f"pair_{stem}.png")
        pair_figure(path, a, b, images.read_image(os.path.join(fused_dir, pair.name)),
                    images.read_image(os.path.join(extras, "mask_m1_y.png")),
                    images.read_image(os.path.join(extras, "deformation_grid.png")))
        paths.append(path)
    return paths


def training_curves(records, path):
    """Loss terms (log scale) and adaptive weights against the step, as one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [record["step"] for record in records]
    figure, (loss_axis, weight_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted(records[-1]):
        if key.startswith("loss/"):
            values = np.abs([record[key] for record in records])
            loss_axis.plot(steps, np.maximum(values, 1e-8), label=key[5:])
        elif key.startswith("weight/"):
            weight_axis.plot(steps, [record[key] for record in records], label=key[7:])
    loss_axis.set(yscale="log", xlabel="step", title="loss terms (absolute value)")
    weight_axis.set(xlabel="step", title="adaptive loss weights")
    loss_axis.legend(fontsize=7)
    weight_axis.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)


def _optional(value, digits):
    return "undefined" if value is None else f"{value:.{digits}f}"


def write_report(path, info):
    """report.md: what ran, the tables and the figures, with the numbers of this run."""
    selection = info["selection"]
    deviation_rows = "\n".join(f"| {name} | {value:.2f} |"
                               for name, value in selection["y_deviation_from_max"].items())
    crop = (f" on random {info['crop_size']} x {info['crop_size']} crops of the training pairs"
            if info["crop_size"] else "")
    figures = "\n".join(f"![pair]({os.path.relpath(p, os.path.dirname(path))})"
                        for p in info["figures"])
    before, after = registration_errors(info["registration"])
    text = f"""# Diff-FCCF demo report

Command: `{info['command']}`

Task `{info['task']}`: {info['train_pairs']} generated training pairs and {info['test_pairs']}
held-out pairs of {info['image_size']} x {info['image_size']} ({info['anatomy']} anatomy,
docs/data.md), B misaligned by a random affine and
elastic motion with a known displacement field. The configuration {info['config']}
trained{crop} for {info['train_steps']} steps ({info['train_minutes']:.1f} min, final total loss
{info['final_loss']:.4g}); fusion used the hierarchical sampler with {info['sampling_steps']}
respaced steps (of {info['diffusion_steps']}), B fused as given ({METHOD}, the default) and
B warped by the network's predicted deformation field first ({REGISTERED}).

Stage times (s): {', '.join(f"{k} {v:.0f}" for k, v in info['stage_seconds'].items())}.

## Fusion metrics (held-out pairs)

{info['metrics_table']}
{info['sentence']} EN, SD and SF also grow with noise, so a lead on them alone does not show a
better fusion; the a-luminance baseline (Y = A, Cr and Cb from B) is the degenerate copy of A,
and a metric it wins does not show that anything was fused.

## Denoising

The held-out pairs were also generated without scanner noise (clean twins: the same anatomy,
uptake, colours and misalignment) and fused with the same seed. Each row compares a method's
fusion of a noisy pair with its fusion of the clean twin (higher: less of the noise reaches the
output; docs/metrics.md, Denoising):

{info['denoising_table']}
## Does the Y fusion select?

In the Y channel the network's mask m1 is the weight of A: every reverse step fuses the two
trajectories as m1 x^A + (1 - m1) x^B, and the output's Y is m1 A + (1 - m1) B_Y with the last
step's m1 (the one saved; sampling.output 'clean'), plus model.detail_gain times A's detail band
where B is kept and, with sampling.detail_of_b, times B's detail band where A is kept inside B's
functional region (docs/method.md section 6, the output). A fusion that keeps the
brighter source has m1 near 0 where B's Y exceeds A (B's bright region, here
{100 * selection['bright_fraction']:.1f}% of the pixels) and near 1 outside it, and its fused Y
F_Y near max(A_Y, B_Y); a copy of A has m1 = 1 everywhere. Pooled over every pixel of the
held-out pairs, from the fuse command's extras (`mask_m1_y.png`, `fused_y.png`, and
`warped_b.png`: the B that was fused, as given or registered, whose Y defines the region; of the
{METHOD} run):

| mean m1 inside B's bright region | mean m1 outside it |
|---|---|
| {_optional(selection['m1_inside_bright'], 3)} | {_optional(selection['m1_outside_bright'], 3)} |

Mean |F_Y - max(A_Y, B_Y)| in grey levels (lower: closer to selecting the brighter source); for
the rules, F_Y is their luma from the same A and warped B: A for a-luminance, and max(A_Y, B_Y)
for ycrcb-maximum, which is 0 by construction.

| method | mean abs(F_Y - max(A_Y, B_Y)) |
|---|---|
{deviation_rows}

## Registration

From the {REGISTERED} run. Mean end-point error of B's alignment to A over all pixels:
{before:.3f} px before warping, {after:.3f} px after warping by the predicted deformation field.
Per pair, the mean of the true field that realigns B and of the predicted one (x, y in pixels): a predicted mean that is the
same for every pair is a shift learnt from the data set, not a registration of the pair.

{registration_table(info["registration"])}

## Training curves

![training curves](training_curves.png)

## Pairs

Each row: A, B, the fused image, the Y-channel fusion mask m1, the predicted deformation as a
warped grid.

{figures}

Checkpoint: `{os.path.relpath(info['checkpoint'], os.path.dirname(path))}`; fused images:
`fused/`; metric tables: `evaluation/`; these numbers, machine-readable: `summary.json`.
"""
    files.write_text(path, text)
    return text


def run_demo(out, task="pet", train_steps=TRAIN_STEPS, image_size=96, train_pairs=64,
             test_pairs=8, sampling_steps=30, seed=0, motion_strength=4.0, crop_size=32,
             config_spec=TINY_CONFIG, overrides=(), command="difffccf demo"):
    """Runs every stage into `out`; returns the report's path. Pairs are image_size x
    image_size; with crop_size > 0 training sees random crop_size x crop_size crops of them
    (config.data.crop_size) and fusion the whole held-out pairs. The model trains with
    `experiment.training_config(..., config_spec, overrides)`."""
    import json

    from difffccf_jax.data import layouts
    from difffccf_jax.evaluation import denoising, scoring
    from difffccf_jax.inference import fusion
    from difffccf_jax.training import train

    if os.path.isdir(out) and os.listdir(out):
        raise UserError(f"--out {out!r} is not empty; choose a new folder")
    if not 0 <= crop_size <= image_size:
        raise UserError(f"--crop-size {crop_size}: expected 0 (train on whole pairs) or a side "
                        f"of at most --image-size {image_size}")
    timings = {}
    started = time.perf_counter()

    from difffccf_jax.data import generator

    anatomy = generator.DEFAULT_ANATOMY
    announce(0, f"{train_pairs} training and {test_pairs} held-out misaligned {task} pairs "
                f"({anatomy} anatomy)")
    train_root, test_root, clean_root, layout = generate(
        out, task, train_pairs, test_pairs, image_size, seed, motion_strength, anatomy)
    timings["data"] = time.perf_counter() - started

    workdir = os.path.join(out, "training")
    config = training_config(task, image_size, train_steps, train_root, train_pairs, sampling_steps,
                         crop_size, config_spec, overrides)
    announce(1, f"compiling, then training the model of {os.path.basename(config_spec)} for "
                f"{config.train.epochs * config.train.steps_per_epoch} steps")
    stage = time.perf_counter()
    state = train.fit(config, workdir)
    timings["train"] = time.perf_counter() - stage
    checkpoint = os.path.join(workdir, train.CHECKPOINT_DIR)

    announce(2, f"{test_pairs} held-out pairs, {sampling_steps} respaced steps")
    stage = time.perf_counter()
    fused_dir = os.path.join(out, "fused")
    registered_dir = os.path.join(out, "fused_registered")
    clean_fused_dir = os.path.join(out, "fused_clean_twins")
    for folder, root, register in ((fused_dir, test_root, False),
                                   (registered_dir, test_root, True),
                                   (clean_fused_dir, clean_root, False)):
        fused = fusion.fuse_folder(checkpoint, folder, data=root, task=task, register=register,
                                   save_extras=True)
        print(fused.summary())
        fused.check()
    timings["fuse"] = time.perf_counter() - stage

    announce(3, "fusion metrics against the classical baselines")
    stage = time.perf_counter()
    evaluation_dir = os.path.join(out, "evaluation")
    metrics_table, _ = scoring.evaluate_folders(
        test_root, layout, {METHOD: fused_dir, REGISTERED: registered_dir}, evaluation_dir,
        with_baselines=True)
    denoising_table, _ = denoising.evaluate_denoising(
        test_root, clean_root, layout, {METHOD: (fused_dir, clean_fused_dir)},
        os.path.join(out, "denoising"), with_baselines=True)
    pairs = layouts.list_pairs(test_root, layout)
    selection = selection_stats(pairs, layout, fused_dir, image_size)
    registration = registration_rows(pairs, registered_dir, image_size)
    timings["evaluate"] = time.perf_counter() - stage

    announce(4, "a figure per pair and the training curves")
    stage = time.perf_counter()
    figures = pair_figures(pairs, layout, fused_dir, os.path.join(out, "figures"), image_size)
    records = train.read_metrics_log(workdir)
    training_curves(records, os.path.join(out, "training_curves.png"))
    timings["figures"] = time.perf_counter() - stage

    announce(5, "report.md")
    with open(os.path.join(evaluation_dir, "evaluation.json"), encoding="utf-8") as file:
        means = metric_means(json.load(file))
    baseline_names = [name for name in means if name not in (METHOD, REGISTERED)]
    comparisons = {"best_baseline": compare(means, METHOD, baseline_names),
                   "ycrcb-maximum": compare(means, METHOD, ["ycrcb-maximum"])}
    info = dict(
        command=command, config=config_text(config_spec, overrides), task=task,
        anatomy=anatomy, train_pairs=train_pairs,
        test_pairs=test_pairs, image_size=image_size, crop_size=crop_size, train_steps=int(state.step),
        train_minutes=timings["train"] / 60, final_loss=records[-1]["loss"],
        sampling_steps=sampling_steps, diffusion_steps=config.diffusion.steps,
        stage_seconds=timings, metrics_table=metrics_table,
        sentence=comparison_sentence(comparisons), denoising_table=denoising_table,
        selection=selection,
        registration=registration, figures=figures, checkpoint=checkpoint)
    summary = summary_record(info, means, comparisons, selection, registration)
    files.write_text(os.path.join(out, SUMMARY_NAME),
                     json.dumps(summary, indent=2, allow_nan=False) + "\n")
    report = os.path.join(out, "report.md")
    write_report(report, info)
    print(f"[demo] done in {(time.perf_counter() - started) / 60:.1f} min: {report}")
    return report
