"""Region rules of the chroma channels (docs/method.md section 5): which pixels of Cr / Cb are
fused with A, and how the fused chroma is brought back to B_c's statistics.

A rule thresholds one channel B_c of B per image and gives the sign and gain with which A enters
the fused chroma (F = B_c + sign * gain * m2 * A inside the region R). Each task and channel has
a rule per phase: the published training branches and the published sampler use different
thresholds AND different signs and gains (config.regions.<task>.<channel>.train / .sample), and
`rules_from_config(..., phase)` returns the chosen phase's threshold, sign and gain together.
Rules hold plain numbers (or arrays of them), so they can be passed into jitted functions as
arguments.

Two statistics (docs/method.md section 5, "Re-standardisation"):
- A before the network is standardised to B_c's mean and std over the pixels of R
  (`standardise_in_region`, per image), in training and sampling alike; dividing by the
  population std (POPULATION_STD) or, as published, by the (n - 1) std + 1e-5 (PUBLISHED_STD,
  config.sampling.condition_std).
- The clean fused estimate (training) and the per-step chroma post-step (sampling) are
  re-standardised by `restandardise`: by default (config.regions_statistics = 'whole_frame') the
  published whole-frame moment matching of the masked images (`moment_match_masked`); the option
  'in_region' uses the in-region statistics instead. Both then clip to [-1, 1] and keep B_c
  outside R.
"""

from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from difffccf_jax.color import BACKGROUND_PIXEL, pixel_in_image
from difffccf_jax.errors import UserError

PERCENTILE = 0  # threshold = the given percentile of the image's values
BACKGROUND = 1  # threshold = the given factor times the image's background reference pixel
KINDS = dict(percentile=PERCENTILE, background=BACKGROUND)
PHASES = ("train", "sample")
WHOLE_FRAME = "whole_frame"  # the published re-standardisation (`moment_match_masked`)
IN_REGION = "in_region"  # the option: statistics over the pixels of R (`standardise_in_region`)
STATISTICS = (WHOLE_FRAME, IN_REGION)

# The pixel whose value the published whole-frame re-standardisation leaves alone (see
# `moment_match_masked`).
REFERENCE_PIXEL = (2, 2)
STD_FLOOR = 1e-10  # added to variances: the std of a constant region is 1e-5, never 0
STD_EPS = 1e-5  # the published standardisations divide by std + 1e-5
# How A's condition is standardised (`standardise_in_region`): by sqrt(variance + STD_FLOOR),
# or as published by the unbiased (n - 1) std + STD_EPS.
POPULATION_STD = "population"
PUBLISHED_STD = "published"
CONDITION_STDS = (POPULATION_STD, PUBLISHED_STD)


class RegionRule(NamedTuple):
    """One chroma channel's rule for one phase. kind: PERCENTILE or BACKGROUND; threshold: the
    percentile (0..100) or the background factor; above: keep values >= the threshold (else <=);
    sign (+1 / -1) and gain of A's contribution to the fused channel in that phase."""
    kind: Any
    threshold: Any
    above: Any
    sign: Any
    gain: Any


class TaskRules(NamedTuple):
    """The rules of one task for its two chroma channels (Y uses no region)."""
    cr: RegionRule
    cb: RegionRule


def rules_from_config(regions, task, phase):
    """TaskRules of `task` for `phase` ('train' or 'sample') from config.regions: the phase
    chooses the threshold rule and the sign and gain (config.regions.<task>.<channel>.<phase>
    holds kind, threshold, above, sign, gain)."""
    if phase not in PHASES:
        raise UserError(f"region phase: expected 'train' or 'sample', got {phase!r}")
    if task not in regions:
        raise UserError(f"regions.{task}: no region rules for task {task!r} "
                        f"(known: {', '.join(sorted(regions.keys()))})")

    def channel_rule(channel):
        rule = regions[task][channel][phase]
        where = f"regions.{task}.{channel}.{phase}"
        missing = [name for name in ("kind", "threshold", "above", "sign", "gain")
                   if name not in rule]
        if missing:
            raise UserError(f"{where}: missing field(s) {', '.join(missing)} (each phase holds "
                            "kind, threshold, above, sign and gain; configs saved before sign and "
                            "gain moved into the phases have them one level up)")
        if rule.kind not in KINDS:
            raise UserError(f"{where}.kind: expected 'percentile' or 'background', "
                            f"got {rule.kind!r}")
        if rule.kind == "percentile" and not 0.0 <= rule.threshold <= 100.0:
            raise UserError(f"{where}.threshold: expected a percentile in 0..100, "
                            f"got {rule.threshold}")
        if float(rule.sign) not in (-1.0, 1.0):
            raise UserError(f"{where}.sign: expected +1 or -1, got {rule.sign}")
        if not float(rule.gain) >= 0.0:
            raise UserError(f"{where}.gain: expected a gain >= 0 (the sign gives the direction), "
                            f"got {rule.gain}")
        return RegionRule(kind=KINDS[rule.kind], threshold=float(rule.threshold),
                          above=bool(rule.above), sign=float(rule.sign), gain=float(rule.gain))

    return TaskRules(cr=channel_rule("cr"), cb=channel_rule("cb"))


def statistics_from_config(config):
    """config.regions_statistics, checked: 'whole_frame' (published) or 'in_region'. Training
    (the clean fused estimate) and sampling (the chroma post-step) both read it."""
    value = config.regions_statistics
    if value not in STATISTICS:
        raise UserError(f"regions_statistics: expected 'whole_frame' (published) or 'in_region', "
                        f"got {value!r}")
    return str(value)


def percentile_threshold(values, percent):
    """Per image, the sorted value at index floor(percent / 100 * N), N = H * W, [B, 1, 1, 1].

    This is the published choice: '>= the 70th percentile' keeps the top N - floor(0.7 N)
    pixels of an image with distinct values, '<= the 30th' keeps floor(0.3 N) + 1."""
    flat = values.reshape(values.shape[0], -1)
    count = flat.shape[1]
    index = jnp.clip(jnp.floor(jnp.asarray(percent, jnp.float32) / 100.0 * count).astype(jnp.int32),
                     0, count - 1)
    threshold = jnp.sort(flat, axis=1)[:, index]
    return threshold.reshape(-1, 1, 1, 1)


def pixel_values(values, pixel):
    """Per image, the value of values [B, H, W, 1] at `pixel` (row, column; the last row or
    column of smaller images), [B, 1, 1, 1]."""
    row, col = pixel_in_image(pixel, *values.shape[1:3])
    return values[:, row, col, 0].reshape(-1, 1, 1, 1)


def background_threshold(values, factor):
    """Per image, factor times the value at BACKGROUND_PIXEL (row 0, column 5, or the last column
    of narrower images), [B, 1, 1, 1]."""
    return factor * pixel_values(values, BACKGROUND_PIXEL)


def region_mask(values, rule):
    """The region R of `rule` in B_c `values` [B, H, W, 1] (thresholds per image), bool
    [B, H, W, 1]."""
    threshold = jnp.where(jnp.asarray(rule.kind) == PERCENTILE,
                          percentile_threshold(values, rule.threshold),
                          background_threshold(values, rule.threshold))
    return jnp.where(jnp.asarray(rule.above), values >= threshold, values <= threshold)


def region_moments(x, region, std=POPULATION_STD):
    """Per-image mean and standard deviation of x [B, H, W, C] over the pixels where region is
    true, each [B, 1, 1, 1]; an empty region gives mean 0. std POPULATION_STD: sqrt(variance +
    STD_FLOOR); PUBLISHED_STD: the unbiased (n - 1) std, as torch's default."""
    weight = region.astype(x.dtype)
    count = jnp.sum(weight, axis=(1, 2, 3), keepdims=True)
    mean = jnp.sum(weight * x, axis=(1, 2, 3), keepdims=True) / jnp.maximum(count, 1.0)
    squares = jnp.sum(weight * (x - mean) ** 2, axis=(1, 2, 3), keepdims=True)
    if std == PUBLISHED_STD:
        return mean, jnp.sqrt(squares / jnp.maximum(count - 1.0, 1.0))
    return mean, jnp.sqrt(squares / jnp.maximum(count, 1.0) + STD_FLOOR)


def standardise_in_region(x, target, region, std=POPULATION_STD):
    """x shifted and scaled to target's mean and std inside region (per image), 0 outside:
    (x - mean_x) / std_x * std_t + mean_t, or with std PUBLISHED_STD the published
    (x - mean_x) / (std_x + 1e-5) * std_t + mean_t with unbiased stds (`region_moments`).

    x, target [B, H, W, C], region bool [B, H, W, C]. Used for A -> B_c before the network and,
    with config.regions_statistics = 'in_region', to bring the fused chroma back to B_c's
    statistics (`restandardise`)."""
    if std not in CONDITION_STDS:
        raise ValueError(f"std: expected one of {CONDITION_STDS}, got {std!r}")
    x_mean, x_std = region_moments(x, region, std)
    target_mean, target_std = region_moments(target, region, std)
    if std == PUBLISHED_STD:
        x_std = x_std + STD_EPS
    return jnp.where(region, (x - x_mean) / x_std * target_std + target_mean, 0.0)


def frame_moments(x):
    """Per-image mean and standard deviation of x [B, H, W, C] over the whole frame, each
    [B, 1, 1, 1]; the std is torch's default (unbiased, N - 1), as in the published code."""
    count = x.shape[1] * x.shape[2] * x.shape[3]
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    variance = jnp.sum((x - mean) ** 2, axis=(1, 2, 3), keepdims=True) / max(count - 1, 1)
    # sqrt of a floored variance: the same std, but a finite (zero) gradient for a constant x
    return mean, jnp.sqrt(jnp.maximum(variance, STD_FLOOR ** 2))


def moment_match_masked(x, target, region, reference=None):
    """The published whole-frame moment matching of the masked images (docs/method.md
    section 5), per image:

        t = x R (0 outside R),  u = (t - mean(t)) / (std(t) + 1e-5) * std(target R) + mean(target R)

    with means and (unbiased) stds over the whole frame, zeros outside R included; then pixels
    where t equals `reference` keep their raw value t. Values outside R are not meaningful (the
    callers take B_c there, `restandardise`). This is not in-region statistics: the zeros outside
    R enter both whole-frame stds through the in-region means, so x's spread in R becomes
    spread_R(x) std(target R) / std(x R), B_c's spread in R only when x and B_c have the same
    mean-to-spread ratio in R, and the mean in R is not B_c's either (on a region of 8 % of
    the image it stays more than 0.3 from B_c's, tests/test_regions.py).

    "pixels where t equals the reference value", as the published code reads: the reference is
    one value per image, the value at REFERENCE_PIXEL (row 2, column 2), compared exactly with t.
    The published training branch takes t's own value there (the fused estimate F R;
    `reference` None), the published sampler B_c's value there (`reference` given, [B, 1, 1, 1]).
    Since that pixel is background in practice, the reference is then 0 in training (the pixels
    it spares are the zeros outside R, replaced by B_c afterwards) and B_c's background value in
    sampling (which an inside value of x matches only by accident); when the pixel lies in R,
    training leaves that pixel raw. With `reference` None the reference pixel itself always keeps
    its value, by position: an exact comparison with its own value could fail when a compiler
    computes t twice with different rounding.

    x, target [B, H, W, C]; region bool [B, H, W, C]; reference [B, 1, 1, 1] (or broadcastable)
    or None.
    """
    t = jnp.where(region, x, 0.0)
    t_mean, t_std = frame_moments(t)
    target_mean, target_std = frame_moments(jnp.where(region, target, 0.0))
    matched = (t - t_mean) / (t_std + STD_EPS) * target_std + target_mean
    if reference is None:
        height, width = t.shape[1:3]
        at_pixel = np.zeros((1, height, width, 1), bool)
        at_pixel[0, min(REFERENCE_PIXEL[0], height - 1), min(REFERENCE_PIXEL[1], width - 1)] = True
        keep = (t == pixel_values(t, REFERENCE_PIXEL)) | at_pixel
    else:
        keep = t == reference
    return jnp.where(keep, t, matched)


def restandardise(x, b, region, reference=None, statistics=WHOLE_FRAME):
    """The fused chroma x [B, H, W, C] brought back to B_c = b's statistics: inside R by
    `moment_match_masked` (statistics 'whole_frame', published; `reference` see there: None in
    training, B_c's value at REFERENCE_PIXEL in sampling) or by
    `standardise_in_region` ('in_region'; `reference` unused), clipped to [-1, 1]; outside R, b.

    Used for the clean fused estimate in training and the chroma post-step of every reverse step;
    `statistics` is a plain string (static under jit)."""
    if statistics == WHOLE_FRAME:
        inside = moment_match_masked(x, b, region, reference)
    elif statistics == IN_REGION:
        inside = standardise_in_region(x, b, region)
    else:
        raise ValueError(f"statistics: expected one of {STATISTICS}, got {statistics!r}")
    return jnp.where(region, jnp.clip(inside, -1.0, 1.0), b)
