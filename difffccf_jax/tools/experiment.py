"""What the demo and the registration check share: the tiny config set up for generated data,
the task's layout, the per-pair registration rows and their table, the evaluation's metric
means, and figures written atomically."""

import os
from typing import NamedTuple

import numpy as np

from difffccf_jax import files
from difffccf_jax.config_cli import shipped_config

TINY_CONFIG = shipped_config("tiny")


def training_config(task, image_size, train_steps, data_root, train_pairs, sampling_steps,
                    crop_size=0, config_spec=TINY_CONFIG, overrides=()):
    """The config `config_spec` (the tiny one by default) set up for one task on the generated
    data and at least `train_steps` training steps (whole epochs), training on random crop_size
    crops of the image_size pairs when crop_size > 0; then the (key, text) `overrides`, which
    win over these settings. A step count, not a time budget, so that results do not depend on
    the machine's speed or load."""
    from difffccf_jax.config_cli import apply_override, load_config_file

    config = load_config_file(config_spec)
    config.data.root = data_root
    config.data.tasks = (task,)
    config.data.image_size = image_size
    config.data.crop_size = crop_size
    config.train.steps_per_epoch = max(1, train_pairs // config.data.batch_size)
    config.train.epochs = -(-train_steps // config.train.steps_per_epoch)
    config.train.checkpoint_every_epochs = 50
    config.sampling.steps = sampling_steps
    for key, text in overrides:
        apply_override(config, key, text)
    return config


def task_layout(task):
    """The published folder layout of `task` (the tiny config's)."""
    from difffccf_jax.config_cli import load_config_file
    from difffccf_jax.data import layouts

    return layouts.layout_from_config(load_config_file(TINY_CONFIG).data, task)


def data_root(out, split):
    """The folder of one split of generated pairs under an experiment's folder."""
    return os.path.join(out, "data", split)


def write_splits(out, layout, image_size, anatomy, splits):
    """Writes each split (name, count, seed, {`generator.write_task` options}) of generated
    pairs under `data_root(out, name)`; returns {name: root}."""
    from difffccf_jax.data import generator

    roots = {}
    for name, count, seed, options in splits:
        roots[name] = data_root(out, name)
        generator.write_task(roots[name], layout, count, image_size, seed, anatomy=anatomy,
                             **options)
    return roots


class RegistrationRow(NamedTuple):
    """One held-out pair's registration: the true and predicted mean displacement [2] and the
    mean end-point error of B's alignment before warping (the true field itself) and after
    warping by the predicted field, in pixels."""
    pair: str
    true_shift: np.ndarray
    predicted_shift: np.ndarray
    before_px: float
    after_px: float


def registration_rows(pairs, fused_dir, image_size):
    """[RegistrationRow] of the pairs whose predicted fields `fuse --save-extras` wrote under
    fused_dir."""
    from difffccf_jax.data import layouts

    rows = []
    for pair in pairs:
        true = layouts.read_displacement(pair, image_size)
        stem = os.path.splitext(pair.name)[0]
        predicted = np.load(os.path.join(fused_dir, "extras", stem, "deformation.npy"))
        rows.append(RegistrationRow(pair.name, true.mean(axis=(0, 1)), predicted.mean(axis=(0, 1)),
                                    float(np.mean(np.linalg.norm(true, axis=-1))),
                                    float(np.mean(np.linalg.norm(true - predicted, axis=-1)))))
    return rows


def registration_errors(rows):
    """(before, after): the mean end-point errors of `registration_rows` over the pairs."""
    return (float(np.mean([row.before_px for row in rows])),
            float(np.mean([row.after_px for row in rows])))


def registration_records(rows):
    """The rows as JSON-ready dicts (summary.json)."""
    return [dict(pair=row.pair, true_mean_shift=[float(v) for v in row.true_shift],
                 predicted_mean_shift=[float(v) for v in row.predicted_shift],
                 before_px=row.before_px, after_px=row.after_px) for row in rows]


def registration_table(rows):
    """Markdown: per pair, true and predicted mean shift and the error before and after."""
    lines = ["| pair | true mean shift (x, y) | predicted mean shift (x, y) | error before (px) "
             "| error after (px) |", "|---|---|---|---|---|"]
    lines += [f"| {row.pair} | {row.true_shift[0]:+.2f}, {row.true_shift[1]:+.2f} | "
              f"{row.predicted_shift[0]:+.2f}, {row.predicted_shift[1]:+.2f} | "
              f"{row.before_px:.3f} | {row.after_px:.3f} |" for row in rows]
    return "\n".join(lines)


def metric_means(evaluation_report):
    """{method: {metric: mean or None}} of a parsed evaluation.json."""
    return {method: {metric: summary["mean"] for metric, summary in summaries.items()}
            for method, summaries in evaluation_report["methods"].items()}


def save_figure(figure, path, dpi=100):
    """Writes a matplotlib figure to `path` as PNG (atomically) and closes it."""
    import matplotlib.pyplot as plt

    temporary = files.temporary_name(path)
    figure.savefig(temporary, dpi=dpi, format="png")
    plt.close(figure)
    os.replace(temporary, path)
