"""The demo: generated data -> time-bounded training -> fusion -> evaluation -> report.

Everything the demo shows is computed by the run: it generates a small realistic set of
misaligned pairs (held-out pairs with their true displacement fields), trains the tiny
configuration for a bounded time, fuses the held-out pairs with the respaced hierarchical
sampler, compares with the classical baselines, and writes figures and a `report.md`.
"""

import os
import time

import numpy as np

from difffccf_jax import files
from difffccf_jax.errors import UserError

TINY_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs", "tiny.py")
STAGES = ("generate data", "train", "fuse", "evaluate", "figures", "report")
METHOD = "diff-fccf"


def announce(index, message, eta_seconds=None):
    """Prints which stage runs now and, when known, when it should end."""
    eta = ""
    if eta_seconds is not None:
        finish = time.strftime("%H:%M:%S", time.localtime(time.time() + eta_seconds))
        eta = f" (about {eta_seconds / 60:.1f} min, until {finish})"
    print(f"[demo {index + 1}/{len(STAGES)}] {STAGES[index]}: {message}{eta}", flush=True)


def demo_config(task, image_size, minutes, data_root, train_pairs, sampling_steps):
    """The tiny config set up for one task on the generated data and a time budget."""
    from difffccf_jax.config_cli import load_config_file

    config = load_config_file(TINY_CONFIG)
    config.data.root = data_root
    config.data.task = task
    config.data.tasks = (task,)
    config.data.multi_task = False
    config.data.image_size = image_size
    config.train.steps_per_epoch = max(1, train_pairs // config.data.batch_size)
    config.train.epochs = 400  # the time budget usually ends training first
    config.train.max_minutes = float(minutes)
    config.train.fast_compile = True  # compiles ~3x faster on CPU: most of a short run
    config.train.checkpoint_every_epochs = 50
    config.sampling.steps = sampling_steps
    return config


def generate(out, task, train_pairs, test_pairs, image_size, seed, motion_strength):
    """Writes a training and a held-out set of misaligned pairs; returns their data roots."""
    from difffccf_jax.config_cli import load_config_file
    from difffccf_jax.data import generator, layouts

    layout = layouts.layout_from_config(load_config_file(TINY_CONFIG).data, task)
    roots = {}
    for split, count, split_seed in (("train", train_pairs, seed), ("test", test_pairs, seed + 1)):
        roots[split] = os.path.join(out, "data", split)
        generator.write_task(roots[split], layout, count, image_size, split_seed,
                             misalign_b=True, motion_strength=motion_strength)
    return roots["train"], roots["test"], layout


def run_command(argv):
    """Runs a `difffccf` subcommand in this process; a failure stops the demo."""
    from difffccf_jax import cli

    status = cli.main(argv)
    if status:
        raise UserError(f"the demo's step `difffccf {' '.join(argv)}` failed (exit {status})")


def registration_rows(pairs, fused_dir, image_size):
    """Per pair: (name, true mean displacement [2], predicted mean displacement [2], mean
    end-point error of B's alignment before warping (the true field itself) and after warping
    by the predicted field), in pixels."""
    from difffccf_jax.data import layouts

    rows = []
    for pair in pairs:
        true = layouts.read_displacement(pair, image_size)
        stem = os.path.splitext(pair.name)[0]
        predicted = np.load(os.path.join(fused_dir, "extras", stem, "deformation.npy"))
        rows.append((pair.name, true.mean(axis=(0, 1)), predicted.mean(axis=(0, 1)),
                     float(np.mean(np.linalg.norm(true, axis=-1))),
                     float(np.mean(np.linalg.norm(true - predicted, axis=-1)))))
    return rows


def registration_errors(rows):
    """(before, after): the mean end-point errors of `registration_rows` over the pairs."""
    return (float(np.mean([row[3] for row in rows])), float(np.mean([row[4] for row in rows])))


def fidelity(fused_rgb, a, b_rgb):
    """(SSIM of the fused image's grey version against A, mean absolute Cr/Cb difference from
    B in levels): the first shows that the anatomy was kept, the second that the colour was."""
    from difffccf_jax import color, metrics

    ssim_a = metrics.ssim_pair(metrics.grey_image(fused_rgb), np.asarray(a, np.float64)[..., 0])
    chroma = (color.rgb_to_ycrcb(np.asarray(fused_rgb, np.float64))[..., 1:]
              - color.rgb_to_ycrcb(np.asarray(b_rgb, np.float64))[..., 1:])
    return ssim_a, float(np.mean(np.abs(chroma)))


def fidelity_table(pairs, layout, fused_dir, image_size):
    """{method: (mean SSIM vs A, mean colour error vs B)} for our fused images and baselines."""
    from difffccf_jax import baselines
    from difffccf_jax.data import images, layouts

    rows = {METHOD: []}
    rows.update({name: [] for name in baselines.BASELINES})
    for pair in pairs:
        a, b = layouts.read_pair_uint8(pair, layout, image_size)
        fused = images.read_image(os.path.join(fused_dir, pair.name))
        rows[METHOD].append(fidelity(fused, a, b))
        for name, rule in baselines.BASELINES.items():
            rows[name].append(fidelity(rule(a, b), a, b))
    return {name: tuple(np.mean(values, axis=0)) for name, values in rows.items()}


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
    _save_figure(figure, path)


def _save_figure(figure, path):
    import matplotlib.pyplot as plt

    temporary = files.temporary_name(path)
    figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
    os.replace(temporary, path)


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
    _save_figure(figure, path)


def write_report(path, info):
    """report.md: what ran, the tables and the figures, with the numbers of this run."""
    fidelity_rows = "\n".join(
        f"| {name} | {ssim:.3f} | {error:.2f} |" for name, (ssim, error) in info["fidelity"].items())
    figures = "\n".join(f"![pair]({os.path.relpath(p, os.path.dirname(path))})"
                        for p in info["figures"])
    before, after = registration_errors(info["registration"])
    registration_lines = "\n".join(
        f"| {name} | {true[0]:+.2f}, {true[1]:+.2f} | {predicted[0]:+.2f}, {predicted[1]:+.2f} "
        f"| {pair_before:.3f} | {pair_after:.3f} |"
        for name, true, predicted, pair_before, pair_after in info["registration"])
    text = f"""# Diff-FCCF demo report

Command: `{info['command']}`

Task `{info['task']}`: {info['train_pairs']} generated training pairs and {info['test_pairs']}
held-out pairs of {info['image_size']} x {info['image_size']}, B misaligned by a random affine and
elastic motion with a known displacement field. The tiny configuration trained for
{info['train_steps']} steps ({info['train_minutes']:.1f} min, final total loss
{info['final_loss']:.4g}); fusion used the hierarchical sampler with {info['sampling_steps']}
respaced steps (of {info['diffusion_steps']}) and registration before fusion.

Stage times (s): {', '.join(f"{k} {v:.0f}" for k, v in info['stage_seconds'].items())}.

## Fusion metrics (held-out pairs)

{info['metrics_table']}
## Anatomy and colour kept

SSIM of the fused image's grey version against A (anatomy kept: higher is better) and the mean
absolute Cr/Cb difference from B in levels (colour kept: lower is better).

| method | SSIM vs A | colour error vs B |
|---|---|---|
{fidelity_rows}

## Registration

Mean end-point error of B's alignment to A over all pixels: {before:.3f} px before warping,
{after:.3f} px after warping by the predicted deformation field. Per pair, the mean of the true
field that realigns B and of the predicted one (x, y in pixels): a predicted mean that is the
same for every pair is a shift learnt from the data set, not a registration of the pair.

| pair | true mean shift | predicted mean shift | error before (px) | error after (px) |
|---|---|---|---|---|
{registration_lines}

## Training curves

![training curves](training_curves.png)

## Pairs

Each row: A, B, the fused image, the Y-channel fusion mask m1, the predicted deformation as a
warped grid.

{figures}

Checkpoint: `{os.path.relpath(info['checkpoint'], os.path.dirname(path))}`; fused images:
`fused/`; metric tables: `evaluation/`.
"""
    files.write_text(path, text)
    return text


def run_demo(out, task="pet", minutes=4.0, image_size=32, train_pairs=32, test_pairs=6,
             sampling_steps=30, seed=0, motion_strength=4.0, command="difffccf demo"):
    """Runs every stage into `out`; returns the report's path."""
    from difffccf_jax import train
    from difffccf_jax.data import layouts

    if os.path.isdir(out) and os.listdir(out):
        raise UserError(f"--out {out!r} is not empty; choose a new folder")
    timings = {}
    started = time.perf_counter()

    announce(0, f"{train_pairs} training and {test_pairs} held-out misaligned {task} pairs")
    train_root, test_root, layout = generate(out, task, train_pairs, test_pairs, image_size,
                                             seed, motion_strength)
    timings["data"] = time.perf_counter() - started

    workdir = os.path.join(out, "training")
    config = demo_config(task, image_size, minutes, train_root, train_pairs, sampling_steps)
    announce(1, "compiling, then training the tiny model", eta_seconds=60 * minutes + 60)
    stage = time.perf_counter()
    state = train.train_and_evaluate(config, workdir)
    timings["train"] = time.perf_counter() - stage
    checkpoint = os.path.join(workdir, train.CHECKPOINT_DIR)

    announce(2, f"{test_pairs} held-out pairs, {sampling_steps} respaced steps")
    stage = time.perf_counter()
    fused_dir = os.path.join(out, "fused")
    run_command(["fuse", "--checkpoint", checkpoint, "--task", task, "--data", test_root,
                 "--out", fused_dir, "--save-extras"])
    timings["fuse"] = time.perf_counter() - stage

    announce(3, "fusion metrics against the classical baselines")
    stage = time.perf_counter()
    evaluation_dir = os.path.join(out, "evaluation")
    run_command(["evaluate", "--task", task, "--data", test_root, "--fused",
                 f"{METHOD}={fused_dir}", "--baselines", "--out", evaluation_dir])
    pairs = layouts.list_pairs(test_root, layout)
    fidelity_rows = fidelity_table(pairs, layout, fused_dir, image_size)
    registration = registration_rows(pairs, fused_dir, image_size)
    timings["evaluate"] = time.perf_counter() - stage

    announce(4, "a figure per pair and the training curves")
    stage = time.perf_counter()
    figures = pair_figures(pairs, layout, fused_dir, os.path.join(out, "figures"), image_size)
    records = train.read_metrics_log(workdir)
    training_curves(records, os.path.join(out, "training_curves.png"))
    timings["figures"] = time.perf_counter() - stage

    announce(5, "report.md")
    with open(os.path.join(evaluation_dir, "evaluation.md"), encoding="utf-8") as file:
        metrics_table = file.read()
    report = os.path.join(out, "report.md")
    write_report(report, dict(
        command=command, task=task, train_pairs=train_pairs, test_pairs=test_pairs,
        image_size=image_size, train_steps=int(state.step),
        train_minutes=timings["train"] / 60, final_loss=records[-1]["loss"],
        sampling_steps=sampling_steps, diffusion_steps=config.diffusion.steps,
        stage_seconds=timings, metrics_table=metrics_table, fidelity=fidelity_rows,
        registration=registration, figures=figures, checkpoint=checkpoint))
    print(f"[demo] done in {(time.perf_counter() - started) / 60:.1f} min: {report}")
    return report
