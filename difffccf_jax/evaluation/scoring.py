"""Scoring fused images against their source pairs and writing the comparison table.

A method is a folder of fused RGB (or grey) images, one per pair, named like the pair's source
files with a .png extension, or one of the classical rules of baselines.py applied on the fly.
The sources are read as the model sees them (data.layouts.read_pair_uint8: A grey, B RGB,
JET-mapped where the task's layout says so), each pair resized to the size of its fused image
(any H x W; the fused images of one pair must agree, pairs may differ), or kept at A's size when
only baselines are scored; the metrics compare the grey versions of F, A and B. The rules fuse
the scored pairs themselves, or the pairs of another set of the same names (`baseline_pairs`:
the misaligned pairs a user has, scored against their aligned versions). Every pair is
scored with metrics.all_metrics; each method's row holds, per metric, the mean and population
standard deviation over the pairs where the metric is defined, and how many pairs it was
undefined for (a constant image), so no NaN ever reaches a mean.
"""

import csv
import dataclasses
import io
import json
import os

import numpy as np

from difffccf_jax import files
from difffccf_jax.evaluation import baselines, metrics
from difffccf_jax.data import images, layouts
from difffccf_jax.errors import UserError

TABLE_NAME = "evaluation"  # evaluation.md, evaluation.csv, evaluation.json
MAX_LISTED_NAMES = 10


@dataclasses.dataclass(frozen=True)
class MetricSummary:
    """One metric of one method over the pairs: mean and std of the defined values (None when
    no pair has one), the number of pairs where it is defined and where it is undefined."""
    mean: float | None
    std: float | None
    defined: int
    undefined: int


def fused_path(folder, pair_name):
    """The fused image of pair `pair_name` in `folder`: the pair's file stem with .png."""
    return os.path.join(folder, os.path.splitext(pair_name)[0] + ".png")


def listed_names(names):
    """The first MAX_LISTED_NAMES names, comma-separated, and how many more there are."""
    more = len(names) - MAX_LISTED_NAMES
    return ", ".join(names[:MAX_LISTED_NAMES]) + (f" and {more} more" if more > 0 else "")


def check_fused_folders(methods, pair_names):
    """UserError unless every method's folder exists and holds a fused image for every pair;
    the message names the missing files of each method."""
    problems = []
    for name, folder in methods.items():
        if not os.path.isdir(folder):
            problems.append(f"method {name!r}: folder {folder} does not exist")
            continue
        missing = [os.path.basename(fused_path(folder, pair)) for pair in pair_names
                   if not os.path.isfile(fused_path(folder, pair))]
        if missing:
            problems.append(f"method {name!r}: {len(missing)} of {len(pair_names)} fused images "
                            f"missing in {folder}: {listed_names(missing)}")
    if problems:
        raise UserError("; ".join(problems))


def read_fused_images(methods, pair_name):
    """{method: uint8 fused image} of one pair; UserError when two methods' images of the pair
    differ in size."""
    paths = {name: fused_path(folder, pair_name) for name, folder in methods.items()}
    fused = {name: images.read_image(path) for name, path in paths.items()}
    first = next(iter(fused), None)
    for name, image in fused.items():
        if image.shape[:2] != fused[first].shape[:2]:
            height, width = fused[first].shape[:2]
            raise UserError(f"{paths[name]}: fused image is {image.shape[1]}x{image.shape[0]}, "
                            f"expected {width}x{height} like {paths[first]}")
    return fused


def matching_pairs(pairs, other_pairs, what):
    """{pair name: the pair of other_pairs (layouts.PairFiles) of that name} for every pair of
    `pairs`; UserError naming the pairs `what` (a set's description) lacks."""
    by_name = {pair.name: pair for pair in other_pairs}
    missing = [pair.name for pair in pairs if pair.name not in by_name]
    if missing:
        raise UserError(f"{what}: {len(missing)} of {len(pairs)} scored pairs missing: "
                        f"{listed_names(missing)}")
    return {pair.name: by_name[pair.name] for pair in pairs}


def score_pairs(pairs, layout, methods, with_baselines, ssim_data_range=255.0,
                progress=lambda items: items, baseline_pairs=None):
    """(scores, sizes): the metric values {method: {pair name: {metric: float or None}}} and
    {pair name: (H, W)}, the size each pair was scored at: that of its fused images (the sources
    are resized to it), or with no fused folder, that of its A image.

    `pairs` are layouts.PairFiles, `methods` maps a method name to its fused folder;
    with_baselines adds the rules of baselines.BASELINES, applied to the sources of each pair,
    or with `baseline_pairs` (layouts.PairFiles of the same names) to that pair's sources
    there, read at the same size, and scored against `pairs`' sources like a fused folder;
    `progress` wraps the pair loop (a progress bar)."""
    check_fused_folders(methods, [pair.name for pair in pairs])
    rule_pairs = (matching_pairs(pairs, baseline_pairs, "the pairs the rules fuse")
                  if with_baselines and baseline_pairs is not None else None)
    scores = {name: {} for name in methods}
    if with_baselines:
        scores.update({name: {} for name in baselines.BASELINES})
    sizes = {}
    for pair in progress(pairs):
        fused = read_fused_images(methods, pair.name)
        size = next(iter(fused.values())).shape[:2] if fused else None
        a, b = layouts.read_pair_uint8(pair, layout, size)
        sizes[pair.name] = a.shape[:2]
        if with_baselines:
            rule_a, rule_b = ((a, b) if rule_pairs is None else
                              layouts.read_pair_uint8(rule_pairs[pair.name], layout, a.shape[:2]))
            fused.update({name: rule(rule_a, rule_b)
                          for name, rule in baselines.BASELINES.items()})
        for name, image in fused.items():
            scores[name][pair.name] = metrics.all_metrics(image, a, b, ssim_data_range)
    return scores, sizes


def sizes_text(sizes):
    """'H x W' of the sizes scored ({pair: (H, W)}), the distinct ones listed."""
    distinct = sorted({tuple(size) for size in sizes.values()})
    shown = ", ".join(f"{height} x {width}" for height, width in distinct[:MAX_LISTED_NAMES])
    more = len(distinct) - MAX_LISTED_NAMES
    return shown + (f" and {more} more sizes" if more > 0 else "")


def summarise(per_pair):
    """{metric: MetricSummary} of one method from its {pair name: {metric: value}}."""
    summary = {}
    for metric in metrics.METRIC_NAMES:
        values = [scores[metric] for scores in per_pair.values()]
        defined = np.array([v for v in values if v is not None], np.float64)
        summary[metric] = MetricSummary(
            mean=float(np.mean(defined)) if defined.size else None,
            std=float(np.std(defined)) if defined.size else None,
            defined=int(defined.size), undefined=len(values) - int(defined.size))
    return summary


def _cell(summary):
    if summary.mean is None:
        return "undefined"
    text = f"{summary.mean:.2f} ± {summary.std:.2f}"
    return text + (f" ({summary.undefined} undef.)" if summary.undefined else "")


def markdown_table(summaries, caption):
    """The comparison table: one row per method, one column per metric ('mean ± std')."""
    header = "| method | " + " | ".join(metrics.METRIC_NAMES) + " |"
    rule = "|---" * (len(metrics.METRIC_NAMES) + 1) + "|"
    rows = [f"| {method} | " + " | ".join(_cell(summary[m]) for m in metrics.METRIC_NAMES) + " |"
            for method, summary in summaries.items()]
    notes = ("mean ± population standard deviation over the pairs; '(k undef.)': undefined for "
             "k pairs (a constant image), left out of the mean")
    return "\n".join([caption, "", header, rule, *rows, "", notes, ""])


def csv_table(summaries):
    """CSV with columns method, then <metric>_mean, <metric>_std, <metric>_undefined; an
    undefined mean is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method"] + [f"{m}_{part}" for m in metrics.METRIC_NAMES
                                  for part in ("mean", "std", "undefined")])
    for method, summary in summaries.items():
        row = [method]
        for m in metrics.METRIC_NAMES:
            s = summary[m]
            row += ["" if s.mean is None else repr(s.mean), "" if s.std is None else repr(s.std),
                    s.undefined]
        writer.writerow(row)
    return buffer.getvalue()


def json_report(summaries, per_pair, info):
    """JSON text: `info` (task, pairs, sizes, ...), the summaries and every per-pair value;
    undefined values are null."""
    report = dict(info, metrics=list(metrics.METRIC_NAMES),
                  methods={method: {m: dataclasses.asdict(s) for m, s in summary.items()}
                           for method, summary in summaries.items()},
                  per_pair=per_pair)
    return json.dumps(report, indent=2, allow_nan=False) + "\n"


def write_tables(out, scores, info):
    """Summarises `scores` ({method: {pair: {metric: value}}}) and writes evaluation.md, .csv
    and .json into `out`; returns (markdown text, [paths])."""
    summaries = {method: summarise(per_pair) for method, per_pair in scores.items()}
    caption = (f"Fusion metrics, task {info['task']}, {info['pairs']} pairs of "
               f"{sizes_text(info['sizes'])}, SSIM data range {info['ssim_data_range']:g}")
    if info.get("baseline_data"):
        caption += f"; the classical rules fuse the pairs under {info['baseline_data']}"
    markdown = markdown_table(summaries, caption)
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f"{TABLE_NAME}.{ext}") for ext in ("md", "csv", "json")]
    files.write_files(list(zip(paths, [markdown, csv_table(summaries),
                                      json_report(summaries, scores, info)])))
    return markdown, paths


def evaluate_folders(data, layout, methods, out, with_baselines=False, ssim_data_range=255.0,
                     show_progress=True, baseline_data=None):
    """Scores each method's folder of fused images ({name: folder}) on the pairs of `layout`
    under `data`, with the classical rules too when with_baselines (fusing the pairs of the same
    names under `baseline_data` when given, see `score_pairs`), and writes the tables into
    `out`; returns (markdown text, [paths])."""
    import tqdm

    if not methods and not with_baselines:
        raise UserError("nothing to evaluate: give --fused NAME=DIR and/or --baselines")
    if not ssim_data_range > 0:
        raise UserError(f"--ssim-data-range {ssim_data_range}: expected a positive number")
    pairs = layouts.list_pairs(data, layout)
    baseline_pairs = None if baseline_data is None else layouts.list_pairs(baseline_data, layout)
    scores, sizes = score_pairs(
        pairs, layout, methods, with_baselines, ssim_data_range,
        progress=lambda items: tqdm.tqdm(items, desc="evaluate", unit="pair", leave=False,
                                         disable=not show_progress),
        baseline_pairs=baseline_pairs)
    info = dict(task=layout.task, data=data, pairs=len(pairs),
                sizes={name: list(size) for name, size in sizes.items()},
                ssim_data_range=ssim_data_range, fused=methods)
    if with_baselines and baseline_data is not None:
        info["baseline_data"] = baseline_data
    return write_tables(out, scores, info)
