"""Region rules of the chroma channels (SPEC section 5): which pixels of Cr / Cb are fused with A.

A rule thresholds one channel B_c of B per image and gives the sign and gain with which A enters
the fused chroma (F = B_c + sign * gain * m2 * A inside the region). Rules hold plain numbers
(or arrays of them), so they can be passed into jitted functions as arguments.
"""

from typing import Any, NamedTuple

import jax.numpy as jnp

from difffccf_jax.errors import UserError

PERCENTILE = 0  # threshold = the given percentile of the image's values
BACKGROUND = 1  # threshold = the given factor times the image's background reference pixel
KINDS = dict(percentile=PERCENTILE, background=BACKGROUND)
PHASES = ("train", "sample")

# The background reference pixel (row, column), the one the published rules compare with.
BACKGROUND_PIXEL = (0, 5)
STD_FLOOR = 1e-10  # added to variances: the std of a constant region is 1e-5, never 0


class RegionRule(NamedTuple):
    """One chroma channel's rule. kind: PERCENTILE or BACKGROUND; threshold: the percentile
    (0..100) or the background factor; above: keep values >= the threshold (else <=);
    sign (+1 / -1) and gain of A's contribution to the fused channel."""
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
    """TaskRules of `task` for `phase` ('train' or 'sample') from config.regions."""
    if phase not in PHASES:
        raise UserError(f"region phase: expected 'train' or 'sample', got {phase!r}")
    if task not in regions:
        raise UserError(f"regions.{task}: no region rules for task {task!r} "
                        f"(known: {', '.join(sorted(regions.keys()))})")

    def channel_rule(channel):
        entry = regions[task][channel]
        rule = entry[phase]
        if rule.kind not in KINDS:
            raise UserError(f"regions.{task}.{channel}.{phase}.kind: expected 'percentile' or "
                            f"'background', got {rule.kind!r}")
        if rule.kind == "percentile" and not 0.0 <= rule.threshold <= 100.0:
            raise UserError(f"regions.{task}.{channel}.{phase}.threshold: expected a "
                            f"percentile in 0..100, got {rule.threshold}")
        return RegionRule(kind=KINDS[rule.kind], threshold=float(rule.threshold),
                          above=bool(rule.above), sign=float(entry.sign), gain=float(entry.gain))

    return TaskRules(cr=channel_rule("cr"), cb=channel_rule("cb"))


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


def background_threshold(values, factor):
    """Per image, factor times the value at BACKGROUND_PIXEL (row 0, column 5, or the last column
    of narrower images), [B, 1, 1, 1]."""
    row, col = BACKGROUND_PIXEL
    reference = values[:, row, min(col, values.shape[2] - 1), 0]
    return (factor * reference).reshape(-1, 1, 1, 1)


def region_mask(values, rule):
    """The region R of `rule` in B_c `values` [B, H, W, 1] (thresholds per image), bool
    [B, H, W, 1]."""
    threshold = jnp.where(jnp.asarray(rule.kind) == PERCENTILE,
                          percentile_threshold(values, rule.threshold),
                          background_threshold(values, rule.threshold))
    return jnp.where(jnp.asarray(rule.above), values >= threshold, values <= threshold)


def region_moments(x, region):
    """Per-image mean and standard deviation of x [B, H, W, C] over the pixels where region is
    true, each [B, 1, 1, 1]; an empty region gives mean 0."""
    weight = region.astype(x.dtype)
    count = jnp.maximum(jnp.sum(weight, axis=(1, 2, 3), keepdims=True), 1.0)
    mean = jnp.sum(weight * x, axis=(1, 2, 3), keepdims=True) / count
    variance = jnp.sum(weight * (x - mean) ** 2, axis=(1, 2, 3), keepdims=True) / count
    return mean, jnp.sqrt(variance + STD_FLOOR)


def standardise_in_region(x, target, region):
    """x shifted and scaled to target's mean and std inside region (per image), 0 outside.

    x, target [B, H, W, C], region bool [B, H, W, C]. Used for A -> B_c before the network and
    to bring the fused chroma back to B_c's statistics."""
    x_mean, x_std = region_moments(x, region)
    target_mean, target_std = region_moments(target, region)
    return jnp.where(region, (x - x_mean) / x_std * target_std + target_mean, 0.0)
