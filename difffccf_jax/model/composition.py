"""How the two sources reach the network and how its masks combine them (docs/method.md
sections 2 and 5): the three channel problems of a batch as one batch of rows, the conditions of
each hierarchical stage, and the masked fused state. Shared by training and sampling."""

import jax.numpy as jnp

from difffccf_jax import pyramid
from difffccf_jax.model import regions

STAGES_THIRDS = "thirds"  # stage floor(3 step / N): thirds as equal as they can be
STAGES_PUBLISHED = "published"  # the published loop's boundaries (`published_reverse_stage`)
STAGE_SPLITS = (STAGES_THIRDS, STAGES_PUBLISHED)


def per_image(values):
    """[B] -> [B, 1, 1, 1] for broadcasting against images."""
    return values.reshape(values.shape + (1, 1, 1))

def fuse(x_a, x_b, m1, m2, chroma, sign_gain):
    """Fused state per image: m1 x_a + (1 - m1) x_b for Y, x_b + sign gain m2 x_a for Cr/Cb.

    x_a, x_b, m1, m2 [B, H, W, 1]; chroma bool [B] (which images are Cr/Cb); sign_gain [B]."""
    luma = m1 * x_a + (1.0 - m1) * x_b
    chroma_fused = x_b + per_image(sign_gain) * m2 * x_a
    return jnp.where(per_image(chroma), chroma_fused, luma)

def detail_band(image, levels):
    """The detail band [B, H, W, 1] of image [B, H, W, 1]: the image minus its low frequencies
    below `levels` pyramid levels (`pyramid.detail`), per image."""
    per_pixel_images = jnp.moveaxis(image[..., 0], 0, -1)  # [H, W, B]: the pyramid's layout
    return jnp.moveaxis(pyramid.detail(per_pixel_images, levels), -1, 0)[..., None]


def clean_luma(a, b, m1, detail, b_region=None):
    """The clean fused Y [B, H, W, 1] of sources a, b and mask m1 (all [B, H, W, 1]):
    m1 a + (1 - m1) b, plus detail.gain times A's detail band where B is kept, (1 - m1): B's
    intensity with the anatomy's structure inside it; and, given B's functional region
    b_region [B, H, W, 1] (0 or 1), detail.gain times B's detail band where A is kept inside
    it, m1 b_region: the uptake's structure where the anatomy is brighter. detail: a
    `settings.FusionDetail`; gain 0 is the published estimate (docs/method.md, deviations)."""
    luma = m1 * a + (1.0 - m1) * b
    if detail.gain:
        luma = luma + detail.gain * (1.0 - m1) * detail_band(a, detail.levels)
        if b_region is not None:
            luma = luma + detail.gain * m1 * b_region * detail_band(b, detail.levels)
    return luma


def channel_batch(a, b, task_rules, condition_std=regions.POPULATION_STD):
    """The three channel problems of a batch as one batch of 3B, channel-major (Y, Cr, Cb).

    a [B, H, W, 1], b [B, H, W, 3] YCrCb. Returns a dict: sources a3 and b3 [3B, H, W, 1] (A and
    the channel of B), the network conditions cond_a, cond_b (Cr/Cb: A standardised to B_c in R,
    B_c * R, zero outside R), region bool [3B, H, W, 1] (all true for Y), chroma bool [3B] and
    sign_gain [3B], sign * gain of each row (0 for Y). task_rules is the rule set of one phase
    (`regions.rules_from_config(..., 'train' or 'sample')`), so training rows carry the training
    sign and gain and sampler rows the sampling ones. condition_std: how A is standardised to
    B_c (`regions.standardise_in_region`)."""
    batch = a.shape[0]
    b_y, b_cr, b_cb = jnp.split(b, 3, axis=-1)
    region = jnp.concatenate([jnp.ones_like(b_y, dtype=bool),
                              regions.region_mask(b_cr, task_rules.cr),
                              regions.region_mask(b_cb, task_rules.cb)], axis=0)
    a3 = jnp.concatenate([a, a, a], axis=0)
    b3 = jnp.concatenate([b_y, b_cr, b_cb], axis=0)
    chroma = jnp.repeat(jnp.array([False, True, True]), batch)
    sign_gain = jnp.repeat(jnp.stack([
        jnp.asarray(0.0, jnp.float32),
        jnp.asarray(task_rules.cr.sign * task_rules.cr.gain, jnp.float32),
        jnp.asarray(task_rules.cb.sign * task_rules.cb.gain, jnp.float32)]), batch)
    image_chroma = per_image(chroma)
    cond_a = jnp.where(image_chroma, regions.standardise_in_region(a3, b3, region, condition_std),
                       a3)
    cond_b = jnp.where(image_chroma, b3 * region, b3)
    return dict(a3=a3, b3=b3, cond_a=cond_a, cond_b=cond_b, region=region, chroma=chroma,
                sign_gain=sign_gain)

def reverse_stage(step, num_steps):
    """The hierarchical stage (0, 1, 2) of reverse step `step` (0 = the noisiest) of a reverse run
    of `num_steps` steps: floor(3 step / num_steps); scalar or array."""
    return (3 * step) // num_steps


def published_reverse_stage(step, num_steps):
    """The stage of reverse step `step` as the published loop splits it: with i = N - 1 - step
    its step index counting down, (B, B) (stage 0) where i > N - floor(N/3), (A, A) (stage 2)
    where i < floor(N/3), (A, B) otherwise; so stage 0 is one step shorter than stage 2 (empty at
    N = 4). Scalar or array."""
    index, third = num_steps - 1 - step, num_steps // 3
    return jnp.where(index > num_steps - third, 0, jnp.where(index < third, 2, 1))


def stage_of(split, step, num_steps):
    """The stage of reverse step `step` under `split` (STAGES_THIRDS or STAGES_PUBLISHED)."""
    if split == STAGES_PUBLISHED:
        return published_reverse_stage(step, num_steps)
    if split == STAGES_THIRDS:
        return reverse_stage(step, num_steps)
    raise ValueError(f"stage split: expected one of {STAGE_SPLITS}, got {split!r}")

def stage_conditions(stage, cond_a, cond_b):
    """The network's two conditions in stage `stage` (a scalar, or one per row [R]) for the
    conditions cond_a, cond_b [R, H, W, 1]: (B, B) in stage 0, (A, B) in 1, (A, A) in 2."""
    stage = jnp.reshape(stage, (-1, 1, 1, 1)) if jnp.ndim(stage) else stage
    return jnp.where(stage == 0, cond_b, cond_a), jnp.where(stage == 2, cond_a, cond_b)
