"""Denoising, measured: how close the fusion of a noisy pair comes to the fusion of its clean twin.

The generator can write every pair twice (`difffccf make-data --clean-twins`, data/generator.py):
as the scanner shows it and without the scanner's noise, with the same anatomy, uptake, colours
and misalignment. A method fuses both sets. The closer its fusion of a noisy pair comes to its
own fusion of the clean twin, the less of the noise reaches its output. The classical rules of
baselines.py are the yardstick: each is applied to the noisy sources and to the clean ones.
Two rows, "input A" and "input B", compare the noisy sources themselves with the clean ones:
the noise that goes in.

Every image is compared in its 8-bit grey version (metrics.grey_image), as the fusion metrics
compare them, by
- PSNR = 10 log10(255^2 / MSE) in dB, MSE the mean squared difference between the noisy-pair
  fusion and the clean-pair fusion (metrics.mean_squared_error with one reference). The peak is
  the 8-bit range, not the fusion metric's max(F), which noise raises. Identical images would
  score infinity; PSNR is capped at PSNR_CAP_DB, which the finest possible difference (one
  level on one pixel, MSE 1 / (H W)) stays below up to about 390 x 390 pixels;
- SSIM of the noisy-pair fusion against the clean-pair fusion (metrics.ssim_pair).
Higher is closer on both. Each row holds the mean and population standard deviation over the
pairs (scoring.summarise), written to `out` as denoising.md and denoising.json; the Markdown
ends with a verdict per method (`verdict`).

This measures how much noise passes through a fusion, not how good the fusion is: an output
that ignores its inputs passes none. Read it with the fusion metrics of `difffccf evaluate`.
"""

import dataclasses
import json
import os

import numpy as np

from difffccf_jax import files
from difffccf_jax.data import layouts
from difffccf_jax.errors import UserError
from difffccf_jax.evaluation import baselines, metrics, scoring

METRICS = ("PSNR", "SSIM")
PEAK = 255.0
PSNR_CAP_DB = 100.0
INPUT_ROWS = ("input A", "input B")
TABLE_NAME = "denoising"  # denoising.md, denoising.json


def psnr(noisy, clean):
    """PSNR in dB of grey `noisy` against grey `clean` ([H, W] on 0..255): 10 log10(255^2 /
    MSE), at most PSNR_CAP_DB (identical images)."""
    mse = metrics.mean_squared_error(noisy, clean, clean)
    if mse == 0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, float(10 * np.log10(PEAK ** 2 / mse)))


def compare(noisy_fused, clean_fused, ssim_data_range=255.0):
    """{'PSNR': dB, 'SSIM': value} of the fusion of a noisy pair against the fusion of its
    clean twin: grey [H, W] / [H, W, 1] or RGB [H, W, 3] images on 0..255 of one size."""
    noisy, clean = metrics.grey_image(noisy_fused), metrics.grey_image(clean_fused)
    if noisy.shape != clean.shape:
        raise ValueError(f"the noisy-pair image {noisy.shape} and the clean-pair image "
                         f"{clean.shape} differ in size")
    if min(noisy.shape) < metrics.SSIM_WINDOW:
        raise ValueError(f"images of shape {noisy.shape} are smaller than SSIM's "
                         f"{metrics.SSIM_WINDOW} x {metrics.SSIM_WINDOW} window")
    return dict(PSNR=psnr(noisy, clean), SSIM=metrics.ssim_pair(noisy, clean, ssim_data_range))


def _clean_twins(pairs, clean_pairs):
    """{pair name: clean PairFiles}; UserError unless both sets hold the same pair names."""
    names, clean_names = {p.name for p in pairs}, {p.name for p in clean_pairs}
    if names != clean_names:
        parts = [f"{len(missing)} only in the {which} set: "
                 + ", ".join(sorted(missing)[:scoring.MAX_LISTED_NAMES])
                 for which, missing in (("noisy", names - clean_names),
                                        ("clean", clean_names - names)) if missing]
        raise UserError("the noisy and the clean set must hold the same pairs (the clean twins "
                        "of make-data --clean-twins); " + "; ".join(parts))
    return {pair.name: pair for pair in clean_pairs}


def score_twins(pairs, clean_pairs, layout, methods, with_baselines, ssim_data_range=255.0,
                progress=lambda items: items):
    """(scores, sizes): {row: {pair name: {'PSNR', 'SSIM'}}} and {pair name: (H, W)}, the size
    each pair was compared at (that of its fused images, else that of its A image).

    `pairs` and `clean_pairs` are the layouts.PairFiles of the noisy set and of its clean twins;
    `methods` maps a method name to (its fused folder of the noisy set, that of the clean set).
    The rows: the methods, the rules of baselines.BASELINES with `with_baselines` (applied to
    the noisy and to the clean sources), then INPUT_ROWS (the sources themselves)."""
    rules = tuple(baselines.BASELINES) if with_baselines else ()
    taken = [name for name in methods if name in rules + INPUT_ROWS]
    if taken:
        raise UserError(f"method name {taken[0]!r} is taken by a row of the table")
    clean_twins = _clean_twins(pairs, clean_pairs)
    # "NAME (noisy)" and "NAME (clean)": scoring's checks then name the set in their messages
    labelled = {f"{name} ({twin})": folder for name, twin_folders in methods.items()
                for twin, folder in zip(("noisy", "clean"), twin_folders)}
    scoring.check_fused_folders(labelled, [pair.name for pair in pairs])
    rows = [*methods, *rules, *INPUT_ROWS]
    scores, sizes = {row: {} for row in rows}, {}
    for pair in progress(pairs):
        fused = scoring.read_fused_images(labelled, pair.name)  # one size for all of the pair
        size = next(iter(fused.values())).shape[:2] if fused else None
        clean_pair = clean_twins[pair.name]
        a, b = layouts.read_pair_uint8(pair, layout, size)
        clean_a, clean_b = layouts.read_pair_uint8(clean_pair, layout, size)
        if clean_a.shape != a.shape:
            raise UserError(f"{clean_pair.a}: the clean twin is {clean_a.shape[1]}x"
                            f"{clean_a.shape[0]}, its noisy pair {pair.a} "
                            f"{a.shape[1]}x{a.shape[0]}")
        sizes[pair.name] = a.shape[:2]
        outputs = {name: (fused[f"{name} (noisy)"], fused[f"{name} (clean)"])
                   for name in methods}
        if with_baselines:
            outputs.update({name: (rule(a, b), rule(clean_a, clean_b))
                            for name, rule in baselines.BASELINES.items()})
        outputs.update(zip(INPUT_ROWS, ((a, clean_a), (b, clean_b))))
        for row, (noisy, clean) in outputs.items():
            scores[row][pair.name] = compare(noisy, clean, ssim_data_range)
    return scores, sizes


def summarise(per_pair):
    """{metric: scoring.MetricSummary} of one row from its {pair name: {metric: value}}
    (scoring.summarise, which reads every fusion metric: the others are left undefined)."""
    padded = {name: {**dict.fromkeys(metrics.METRIC_NAMES), **values}
              for name, values in per_pair.items()}
    summary = scoring.summarise(padded)
    return {metric: summary[metric] for metric in METRICS}


def verdict(method, summaries, scores, rules):
    """One sentence: whether `method` denoises, i.e. whether its fusion of the noisy pairs
    comes closer to its fusion of the clean pairs (higher mean PSNR and SSIM) than that of
    every rule in `rules`, by how much over the closest rule, and on how many pairs its PSNR
    beats every rule's."""
    if not rules:
        return f"{method}: no classical rule to compare with (add --baselines)."
    own = summaries[method]
    closest = {metric: max(rules, key=lambda rule: summaries[rule][metric].mean)
               for metric in METRICS}
    best = {metric: summaries[closest[metric]][metric].mean for metric in METRICS}
    margin = {metric: own[metric].mean - best[metric] for metric in METRICS}
    pairs = scores[method]
    wins = sum(all(pairs[name]["PSNR"] > scores[rule][name]["PSNR"] for rule in rules)
               for name in pairs)
    comparison = (f"PSNR {own['PSNR'].mean:.2f} dB against {best['PSNR']:.2f} dB for the "
                  f"closest rule ({closest['PSNR']}, {margin['PSNR']:+.2f} dB), SSIM "
                  f"{own['SSIM'].mean:.4f} against {best['SSIM']:.4f} ({closest['SSIM']}, "
                  f"{margin['SSIM']:+.4f}); its PSNR beats every rule's on {wins} of "
                  f"{len(pairs)} pairs")
    if margin["PSNR"] > 0 and margin["SSIM"] > 0:
        return (f"{method} denoises: its fusion of the noisy pairs comes closer to its fusion "
                f"of the clean pairs than every classical rule's: {comparison}.")
    if margin["PSNR"] <= 0 and margin["SSIM"] <= 0:
        return (f"{method} does not denoise: a classical rule's fusion of the noisy pairs comes "
                f"at least as close to its fusion of the clean pairs: {comparison}.")
    return (f"{method}: mixed, PSNR and SSIM disagree on whether its fusion of the noisy pairs "
            f"comes closer to its fusion of the clean pairs than every classical rule's: "
            f"{comparison}.")


def _cell(summary, decimals):
    return f"{summary.mean:.{decimals}f} ± {summary.std:.{decimals}f}"


def markdown_table(summaries, caption, verdicts):
    """The table (one row per method, rule and input: PSNR and SSIM, 'mean ± std'), its notes
    and the verdicts."""
    rows = [f"| {row} | {_cell(summary['PSNR'], 2)} | {_cell(summary['SSIM'], 4)} |"
            for row, summary in summaries.items()]
    notes = ("mean ± population standard deviation over the pairs; higher is closer to the "
             f"fusion of the clean twin; PSNR against a 255 peak, capped at {PSNR_CAP_DB:g} dB "
             f"(identical images); {' and '.join(INPUT_ROWS)}: the noisy sources against the "
             "clean ones, the noise that goes in")
    lines = [caption, "", "| method | PSNR (dB) | SSIM |", "|---|---|---|", *rows, "", notes]
    if verdicts:
        lines += ["", *(f"- {text}" for text in verdicts.values())]
    return "\n".join(lines + [""])


def write_tables(out, scores, info, methods):
    """Summarises `scores` ({row: {pair: {'PSNR', 'SSIM'}}}), judges each of `methods` against
    the rules of baselines.BASELINES among the rows, and writes denoising.md and
    denoising.json into `out`; returns (markdown text, [paths])."""
    summaries = {row: summarise(per_pair) for row, per_pair in scores.items()}
    rules = [row for row in scores if row in baselines.BASELINES]
    verdicts = {method: verdict(method, summaries, scores, rules) for method in methods}
    caption = (f"Denoising, task {info['task']}, {info['pairs']} pairs of "
               f"{scoring.sizes_text(info['sizes'])}: each fusion of a noisy pair against the "
               "fusion of its clean twin, on 8-bit grey versions, SSIM data range "
               f"{info['ssim_data_range']:g}")
    markdown = markdown_table(summaries, caption, verdicts)
    report = dict(info, metrics=list(METRICS), psnr_peak=PEAK, psnr_cap_db=PSNR_CAP_DB,
                  methods={row: {m: dataclasses.asdict(s) for m, s in summary.items()}
                           for row, summary in summaries.items()},
                  verdicts=verdicts, per_pair=scores)
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f"{TABLE_NAME}.{ext}") for ext in ("md", "json")]
    files.write_files(list(zip(paths, [markdown, json.dumps(report, indent=2,
                                                            allow_nan=False) + "\n"])))
    return markdown, paths


def evaluate_denoising(data, clean_data, layout, methods, out, with_baselines=False,
                       ssim_data_range=255.0, show_progress=True):
    """Compares each method's fusions of the noisy pairs of `layout` under `data` with its
    fusions of their clean twins under `clean_data` ({name: (noisy folder, clean folder)}),
    the classical rules too with `with_baselines`, and writes the tables into `out`; returns
    (markdown text, [paths]). Folders may be str or os.PathLike."""
    import tqdm

    if not methods and not with_baselines:
        raise UserError("nothing to evaluate: give --fused NAME=NOISY_DIR:CLEAN_DIR and/or "
                        "--baselines")
    if not ssim_data_range > 0:
        raise UserError(f"--ssim-data-range {ssim_data_range}: expected a positive number")
    if os.path.realpath(data) == os.path.realpath(clean_data):
        raise UserError(f"--clean-data {clean_data}: expected the clean twins' data root, not "
                        "the noisy set's")
    pairs = layouts.list_pairs(data, layout)
    clean_pairs = layouts.list_pairs(clean_data, layout)
    scores, sizes = score_twins(
        pairs, clean_pairs, layout, methods, with_baselines, ssim_data_range,
        progress=lambda items: tqdm.tqdm(items, desc="denoising", unit="pair", leave=False,
                                         disable=not show_progress))
    info = dict(task=layout.task, data=os.fspath(data), clean_data=os.fspath(clean_data),
                pairs=len(pairs), sizes={name: list(size) for name, size in sizes.items()},
                ssim_data_range=ssim_data_range,
                fused={name: dict(noisy=os.fspath(noisy), clean=os.fspath(clean))
                       for name, (noisy, clean) in methods.items()})
    return write_tables(out, scores, info, methods)
