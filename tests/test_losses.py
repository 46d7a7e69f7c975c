"""Loss functions against float64 oracles and known answers, and the three-channel loss terms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from difffccf_jax import color, pyramid
from difffccf_jax.model import (composition, diffusion, filters, regions, registration, regularisers,
                                settings, similarity, unet)
from difffccf_jax.training import losses
from difffccf_jax.config_cli import load_config
from difffccf_jax.errors import UserError


def uniform(seed, shape, low=-1.0, high=1.0):
    return jnp.asarray(np.random.default_rng(seed).uniform(low, high, shape), jnp.float32)


def bin_centre_image(seed, bins, shape=(2, 64, 64, 1)):
    """Values exactly on the `bins` centres of [-1, 1], with a non-uniform histogram."""
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(bins))
    index = rng.choice(bins, size=shape, p=probabilities)
    return jnp.asarray(np.linspace(-1, 1, bins)[index], jnp.float32), index


def hard_entropy(index, bins):
    counts = np.bincount(index.ravel(), minlength=bins)
    p = counts[counts > 0] / counts.sum()
    return -np.sum(p * np.log(p))


# ---- mutual information, correlation ratio, local NCC -------------------------------------------

def test_mi_of_image_with_itself_is_its_entropy():
    """Values on bin centres with a narrow kernel: MI(x, x) = the histogram entropy. A wider
    kernel blurs the joint table, so MI stays below the soft entropy and grows as it narrows."""
    x, index = bin_centre_image(0, 16)
    mi = similarity.mutual_information(x, x, bins=16, sigma=0.15)
    for i in range(2):
        assert float(mi[i]) == pytest.approx(hard_entropy(index[i], 16), abs=1e-4)
    wide = [float(similarity.mutual_information(x, x, 16, s)[0]) for s in (0.8, 0.5, 0.3)]
    assert wide[0] < wide[1] < wide[2] < float(mi[0])
    p = np.asarray(jnp.mean(similarity.soft_bin_weights(x, 16, 0.5), axis=1))[0]
    assert wide[1] <= -np.sum(p * np.log(p)) + 1e-5


def test_mi_matches_float64_parzen_oracle():
    a, b = uniform(1, (1, 24, 24, 1)), uniform(2, (1, 24, 24, 1))
    b = 0.6 * a + 0.4 * b
    bins, sigma = 12, 0.5
    centres = np.linspace(-1, 1, bins)
    width = 2 / (bins - 1)

    def weights(x):
        d = (np.asarray(x, np.float64).reshape(-1, 1) - centres) / (sigma * width)
        w = np.exp(-0.5 * d ** 2)
        return w / w.sum(axis=1, keepdims=True)

    joint = weights(a).T @ weights(b) / a.size
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    expected = np.sum(joint * np.log(joint / outer))
    assert float(similarity.mutual_information(a, b, bins, sigma)[0]) == pytest.approx(expected,
                                                                                   rel=1e-4)


def test_mi_of_independent_noise_is_near_zero_and_gradient_flows():
    a, b = uniform(3, (1, 128, 128, 1)), uniform(4, (1, 128, 128, 1))
    mi_and_grad = jax.jit(jax.value_and_grad(lambda x, y: similarity.mutual_information(x, y)[0],
                                             argnums=1))
    independent, grad = mi_and_grad(a, b)
    assert abs(float(independent)) < 0.01
    assert np.all(np.isfinite(grad)) and float(jnp.max(jnp.abs(grad))) > 0
    dependent, grad = mi_and_grad(a, jnp.sin(3 * a))
    assert float(dependent) > 1.0
    assert np.all(np.isfinite(grad)) and float(jnp.max(jnp.abs(grad))) > 0


def test_correlation_ratio_known_answers():
    """eta^2(b | a) = 1 when b is a function of a's classes (compared with the definition on hard
    classes), about 0 for independent b, and in between for b = f(a) + noise."""
    a, index = bin_centre_image(5, 8, (1, 48, 48, 1))
    b = jnp.cos(3 * a)
    assert float(similarity.correlation_ratio(a, b, 8, 0.15)[0]) == pytest.approx(1.0, abs=1e-4)
    noise = uniform(6, a.shape)
    noisy = b + 0.5 * noise
    values, classes = np.asarray(noisy, np.float64).ravel(), index.ravel()
    between = sum(np.sum(classes == k) * (values[classes == k].mean() - values.mean()) ** 2
                  for k in np.unique(classes))
    expected = between / np.sum((values - values.mean()) ** 2)
    assert float(similarity.correlation_ratio(a, noisy, 8, 0.15)[0]) == pytest.approx(expected,
                                                                                  rel=1e-3)
    assert float(similarity.correlation_ratio(uniform(7, a.shape), noise, 8, 0.5)[0]) < 0.01


def test_local_ncc_known_answers():
    a = uniform(8, (2, 32, 32, 1))
    np.testing.assert_allclose(similarity.local_ncc(a, -2 * a + 0.3, 9), 1.0, atol=1e-3)
    assert float(jnp.max(similarity.local_ncc(a, uniform(9, a.shape), 9))) < 0.05


# ---- SSIM, Sobel, quality loss ------------------------------------------------------------------

def ssim_window():
    """The 11 x 11 Gaussian window of SSIM (sigma 1.5), float64, built directly in 2-D."""
    offsets = np.arange(11) - 5.0
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5 ** 2))
    return window / window.sum()


SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def ssim_oracle(x, y, data_range=2.0):
    """Float64 SSIM by explicit weighted sums over every 11 x 11 window (no padding)."""
    w = ssim_window()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    h, wd = x.shape
    values = []
    for i in range(h - 10):
        for j in range(wd - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = np.sum(w * px), np.sum(w * py)
            vx, vy = np.sum(w * px * px) - mx * mx, np.sum(w * py * py) - my * my
            cov = np.sum(w * px * py) - mx * my
            values.append((2 * mx * my + c1) * (2 * cov + c2)
                          / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return np.mean(values)


def sobel_oracle(v):
    """|Sobel_x| + |Sobel_y| of a 2-D float64 image, zero padding."""
    return (np.abs(ndimage.sobel(v, axis=1, mode="constant"))
            + np.abs(ndimage.sobel(v, axis=0, mode="constant")))


def quality_oracle(f, s1, s2, weights):
    """w1 (1 - (SSIM(F, S1) + SSIM(F, S2)) / 2) + w2 mean| |grad F| - max(|grad S1|, |grad S2|) |
    + w3 mean|F - max(S1, S2)| of 2-D float64 images (section 5)."""
    w_ssim, w_grad, w_intensity = weights
    return (w_ssim * (1 - 0.5 * (ssim_oracle(f, s1) + ssim_oracle(f, s2)))
            + w_grad * np.mean(np.abs(sobel_oracle(f) - np.maximum(sobel_oracle(s1),
                                                                     sobel_oracle(s2))))
            + w_intensity * np.mean(np.abs(f - np.maximum(s1, s2))))


def dense_ssim(x, y, data_range=2.0):
    """JAX SSIM [B] with the 2-D window applied directly (`filters.window_moments`)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y, var_x, var_y, cov = filters.window_moments(x, y, jnp.asarray(ssim_window()))
    return jnp.mean((2 * mu_x * mu_y + c1) * (2 * cov + c2)
                    / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)), axis=(1, 2, 3))


def dense_sobel(x):
    """JAX |Sobel_x| + |Sobel_y| with the 3 x 3 kernels applied directly, zero padding."""
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return (jnp.abs(filters.filter_valid(padded, jnp.asarray(SOBEL_X)))
            + jnp.abs(filters.filter_valid(padded, jnp.asarray(SOBEL_X.T))))


def dense_quality(fused, a, b, weights):
    """The quality loss [B] with dense 2-D filters, each source filtered on its own: the
    differentiable oracle of `losses.quality_loss`."""
    w_ssim, w_grad, w_intensity = weights
    joint_grad = jnp.maximum(dense_sobel(a), dense_sobel(b))
    return (w_ssim * (1 - 0.5 * (dense_ssim(fused, a) + dense_ssim(fused, b)))
            + w_grad * jnp.mean(jnp.abs(dense_sobel(fused) - joint_grad), axis=(1, 2, 3))
            + w_intensity * jnp.mean(jnp.abs(fused - jnp.maximum(a, b)), axis=(1, 2, 3)))


def test_separable_filter_matches_the_dense_2d_filter():
    maps = uniform(20, (2, 32, 28, 3))
    taps_y, taps_x = np.array([0.5, -1.0, 2.0, 0.25, 1.5]), np.array([1.0, -3.0, 0.5])
    got = filters.filter_separable(maps, taps_y, taps_x)
    assert got.shape == (2, 28, 26, 3)
    kernel = np.outer(taps_y, taps_x)
    expected = ndimage.correlate(np.asarray(maps, np.float64), kernel[None, :, :, None])
    np.testing.assert_allclose(got, expected[:, 2:-2, 1:-1], atol=1e-5)
    np.testing.assert_allclose(got, filters.filter_valid(maps, jnp.asarray(kernel)),
                               atol=1e-5)


def test_ssim_against_each_reference_matches_the_oracle():
    x = jnp.tanh(2 * uniform(21, (2, 32, 32, 1)))
    references = jnp.concatenate([x + 0.3 * uniform(22, x.shape), uniform(23, x.shape), x], -1)
    got = losses.ssim_against(x, references)
    assert got.shape == (2, 3)
    x64, references64 = np.asarray(x, np.float64), np.asarray(references, np.float64)
    expected = [[ssim_oracle(x64[i, ..., 0], references64[i, ..., r]) for r in range(3)]
                for i in range(2)]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got[:, 2], 1.0, atol=1e-6)
    np.testing.assert_allclose(losses.ssim(x, references[..., :1]), got[:, 0], atol=1e-7)


def test_sobel_of_a_linear_ramp_is_constant_inside():
    """Sobel_x of s x + t y is 8 s inside the image (weights 1, 2, 1 times a difference over 2
    pixels), Sobel_y 8 t; each channel is filtered on its own."""
    rows, cols = np.mgrid[0:32, 0:32].astype(np.float32) / 32
    ramps = np.stack([0.5 * cols - 0.25 * rows, -0.75 * cols, 0.3 * rows], axis=-1)[None]
    got = np.asarray(losses.sobel_magnitude(jnp.asarray(ramps)))
    inside = got[0, 1:-1, 1:-1]
    np.testing.assert_allclose(inside, np.broadcast_to(8 / 32 * np.array([0.75, 0.75, 0.3]),
                                                       inside.shape), atol=1e-5)


def test_quality_loss_and_its_gradient_match_the_dense_oracle():
    """Random rows with per-row weights (as `training_losses` passes them), and Cr/Cb-like rows
    whose two sources are one image (the ties of max(|grad a|, |grad b|))."""
    fused, a, b = (jnp.tanh(2 * uniform(seed, (3, 32, 32, 1))) for seed in (24, 25, 26))
    weights = (jnp.array([30.0, 0.0, 10.0]), jnp.array([40.0, 40.0, 10.0]),
               jnp.array([40.0, 40.0, 40.0]))
    got = losses.quality_loss(fused, a, b, weights)
    np.testing.assert_allclose(got, dense_quality(fused, a, b, weights), rtol=1e-5)
    f64, a64, b64 = (np.asarray(v, np.float64)[..., 0] for v in (fused, a, b))
    expected = [quality_oracle(f64[i], a64[i], b64[i], [w[i] for w in weights])
                for i in range(3)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)

    @functools.partial(jax.jit, static_argnums=0)
    def gradients(quality):
        """d/d(F, a, b) with three sources, then d/d(F, s) with a = b = s."""
        return (jax.grad(lambda f, a, b: jnp.sum(quality(f, a, b, weights)),
                         argnums=(0, 1, 2))(fused, a, b)
                + jax.grad(lambda f, s: jnp.sum(quality(f, s, s, weights)),
                           argnums=(0, 1))(fused, a))

    for got_grad, expected_grad in zip(gradients(losses.quality_loss), gradients(dense_quality)):
        np.testing.assert_allclose(got_grad, expected_grad,
                                   atol=1e-5 * float(jnp.max(jnp.abs(expected_grad))))


def test_ssim_identity_oracle_and_monotone_in_noise():
    x = jnp.tanh(2 * uniform(10, (1, 24, 24, 1)))
    noise = uniform(11, x.shape)
    assert float(losses.ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-6)
    y = x + 0.3 * noise
    expected = ssim_oracle(np.asarray(x, np.float64)[0, ..., 0],
                           np.asarray(y, np.float64)[0, ..., 0])
    assert float(losses.ssim(x, y)[0]) == pytest.approx(expected, abs=1e-5)
    scores = [float(losses.ssim(x, x + s * noise)[0]) for s in (0.05, 0.2, 0.5, 1.0)]
    assert all(first > second for first, second in zip(scores, scores[1:]))


def test_sobel_magnitude_matches_scipy():
    x = uniform(12, (1, 10, 12, 1))
    xs = np.asarray(x, np.float64)[0, ..., 0]
    expected = (np.abs(ndimage.sobel(xs, axis=1, mode="constant"))
                + np.abs(ndimage.sobel(xs, axis=0, mode="constant")))
    np.testing.assert_allclose(losses.sobel_magnitude(x)[0, ..., 0], expected, atol=1e-5)


def test_quality_loss_terms():
    """Zero for F = a = b; otherwise the weighted sum of the three terms built from the oracles."""
    a = jnp.tanh(2 * uniform(13, (1, 20, 20, 1)))
    b = uniform(14, a.shape)
    fused = 0.5 * (a + b)
    assert float(losses.quality_loss(a, a, a)[0]) == pytest.approx(0.0, abs=1e-5)
    a64, b64, f64 = (np.asarray(v, np.float64)[0, ..., 0] for v in (a, b, fused))
    expected = quality_oracle(f64, a64, b64, (30.0, 40.0, 40.0))
    got = losses.quality_loss(fused, a, b, (30.0, 40.0, 40.0))
    assert float(got[0]) == pytest.approx(expected, rel=1e-4)


# ---- noise and fusion losses, fused estimate ----------------------------------------------------

def test_noise_and_fusion_losses_known_answers():
    eps = uniform(15, (2, 8, 8, 1))
    np.testing.assert_allclose(losses.noise_loss(eps, eps + 0.5, 128.0), 64.0, rtol=1e-6)
    x_a, x_b = uniform(16, eps.shape), uniform(17, eps.shape)
    half = jnp.full(eps.shape, 0.5)
    chroma = jnp.array([False, True])
    sign_gain = jnp.array([0.0, 1.0])
    fused = composition.fuse(x_a, x_b, half, half, chroma, sign_gain)
    np.testing.assert_allclose(fused[0], 0.5 * (x_a[0] + x_b[0]), atol=1e-6)
    np.testing.assert_allclose(fused[1], x_b[1] + 0.5 * x_a[1], atol=1e-6)
    region = jnp.broadcast_to(jnp.arange(8)[None, :, None, None] < 4, eps.shape)
    got = losses.fusion_loss(fused, x_a, x_b, half, region, chroma)
    # Y with m1 = 1/2: |f - x_a| + |f - x_b| = |x_a - x_b|. Cr with sign_gain 1: f - m2 x_a = x_b.
    assert float(got[0]) == pytest.approx(float(jnp.mean(jnp.abs(x_a[0] - x_b[0]))), rel=1e-5)
    assert float(got[1]) == pytest.approx(float(jnp.sum(jnp.abs(x_b[1, :4])) / 64), rel=1e-5)


def fused_estimate_case():
    """Rows Y, Cr, Cb of one pair (16 x 16): A, B's channel, masks, regions (the Cr region holds
    the reference pixel (2, 2), the Cb region of 8 % does not), chroma flags, signed gains and
    the network conditions."""
    rng = np.random.default_rng(18)
    a = jnp.asarray(rng.uniform(-1, 1, (3, 16, 16, 1)), jnp.float32)
    b = jnp.asarray(np.clip(rng.normal([0.0, 0.5, -0.4], 0.15, (16, 16, 1, 3)), -1, 1)
                    .transpose(3, 0, 1, 2), jnp.float32)
    m = jnp.asarray(rng.uniform(0.2, 0.9, a.shape), jnp.float32)
    region = np.ones(a.shape, bool)
    region[1] = np.arange(16)[None, :, None] < 7  # columns 0..6: (2, 2) is inside
    region[2] = rng.uniform(size=(16, 16, 1)) < 0.08
    region[2, 2, 2] = False
    region = jnp.asarray(region)
    chroma = jnp.array([False, True, True])
    sign_gain = jnp.array([0.0, -0.45, -1.0])
    image_chroma = chroma[:, None, None, None]
    cond_a = jnp.where(image_chroma, regions.standardise_in_region(a, b, region), a)
    cond_b = jnp.where(image_chroma, b * region, b)
    return a, b, m, region, chroma, sign_gain, cond_a, cond_b


def published_normalize_with_ref_distribution(f0, source, reference):
    """Float64 transcription of the published training branch's re-standardisation of one
    image: (f0 - mean) / (std + 1e-5) * std(source) + mean(source) over the whole frame (torch's
    unbiased std), pixels of f0 equal to `reference` left as they are."""
    out = (f0 - f0.mean()) / (f0.std(ddof=1) + 1e-5) * source.std(ddof=1) + source.mean()
    keep = f0 == reference
    out[keep] = f0[keep]
    return out


def test_clean_fused_estimate_is_the_published_training_branch():
    """F0 = B_c R + sign gain A' R m2, ref = F0 at (2, 2), whole-frame moment matching against
    B_c R, clipped, F0 R + B_c (not R) -- per image, in float64."""
    a, b, m, region, chroma, sign_gain, cond_a, cond_b = fused_estimate_case()
    fused = np.asarray(jax.jit(losses.clean_fused_estimate)(cond_a, cond_b, b, m, m, region,
                                                            chroma, sign_gain))
    np.testing.assert_allclose(fused[0], m[0] * a[0] + (1 - m[0]) * b[0], atol=1e-6)
    for row in (1, 2):
        r = np.asarray(region[row])
        b_c = np.asarray(b[row], np.float64)
        a_std = np.asarray(cond_a[row], np.float64)
        f0 = b_c * r + float(sign_gain[row]) * a_std * r * np.asarray(m[row], np.float64)
        f0 = published_normalize_with_ref_distribution(f0, b_c * r, f0[2, 2, 0])
        expected = np.clip(f0, -1, 1) * r + b_c * ~r
        np.testing.assert_allclose(fused[row], expected, rtol=1e-5, atol=3e-6, err_msg=row)
    # Cr: the reference pixel lies in R and keeps its raw fused value
    raw = float(b[1, 2, 2, 0] - 0.45 * cond_a[1, 2, 2, 0] * m[1, 2, 2, 0])
    assert float(fused[1, 2, 2, 0]) == pytest.approx(raw, abs=1e-6)
    # Cb, R on 8 % of the image: whole-frame statistics are not B_c's statistics in R (the
    # in-region option gives B_c's spread; here the spread is 1.7 x larger)
    in_region = np.asarray(losses.clean_fused_estimate(cond_a, cond_b, b, m, m, region, chroma,
                                                       sign_gain, regions.IN_REGION))
    r = np.asarray(region[2])
    assert fused[2][r].std() > 1.4 * in_region[2][r].std()
    assert np.abs(fused[2] - in_region[2]).max() > 0.2


def test_clean_fused_estimate_in_region_option_restores_chroma_statistics():
    a, b, m, region, chroma, sign_gain, cond_a, cond_b = fused_estimate_case()
    fused = np.asarray(losses.clean_fused_estimate(cond_a, cond_b, b, m, m, region, chroma,
                                                   sign_gain, regions.IN_REGION))
    np.testing.assert_allclose(fused[0], m[0] * a[0] + (1 - m[0]) * b[0], atol=1e-6)
    for row in (1, 2):
        inside, r = fused[row][np.asarray(region[row])], np.asarray(region[row])
        b_c = np.asarray(b[row])
        assert inside.mean() == pytest.approx(b_c[r].mean(), abs=1e-5)
        assert inside.std() == pytest.approx(b_c[r].std(), rel=1e-3)
        np.testing.assert_array_equal(fused[row][~r], b_c[~r])


# ---- the three-channel loss terms ---------------------------------------------------------------

def ycrcb_batch(seed, batch=2, size=32):
    """A [B, H, W, 1] and B [B, H, W, 3] (YCrCb) in [-1, 1]: smooth structures with colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    a, b = [], []
    for _ in range(batch):
        cx, cy = rng.uniform(-0.4, 0.4, 2)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.2)
        ring = np.exp(-((np.hypot(xx, yy) - 0.6) ** 2) / 0.02)
        a.append(np.tanh(1.5 * ring + 0.5 * np.sin(4 * xx) * blob) * 1.6 - 0.8)
        b.append(np.stack([blob * 1.6 - 0.8, 0.6 * blob * np.cos(3 * yy),
                           -0.5 * blob * np.sin(2 * xx) + 0.05 * rng.normal(size=xx.shape)], -1))
    return (jnp.asarray(np.array(a)[..., None], jnp.float32),
            jnp.asarray(np.clip(np.array(b), -1, 1), jnp.float32))


def test_channel_batch_layout(paper_config_path):
    config = load_config(paper_config_path)
    a, b = ycrcb_batch(1)
    rules = regions.rules_from_config(config.regions, "spect", "train")
    rows = composition.channel_batch(a, b, rules)
    np.testing.assert_array_equal(rows["cond_a"][:2], a)
    np.testing.assert_array_equal(rows["cond_b"][:2], b[..., :1])
    np.testing.assert_array_equal(rows["chroma"], [False, False, True, True, True, True])
    np.testing.assert_allclose(rows["sign_gain"], [0, 0, 1, 1, -1, -1])
    for k, channel in ((1, 1), (2, 2)):
        region = np.asarray(rows["region"][2 * k:2 * k + 2])
        b_c = np.asarray(b[..., channel:channel + 1])
        np.testing.assert_array_equal(rows["cond_b"][2 * k:2 * k + 2], np.where(region, b_c, 0))
        cond_a = np.asarray(rows["cond_a"][2 * k:2 * k + 2])
        assert np.all(cond_a[~region] == 0)
        assert cond_a[0][region[0]].mean() == pytest.approx(b_c[0][region[0]].mean(), abs=1e-5)
    # Spect Cr keeps >= the 70th percentile: 30 % of each image.
    assert float(jnp.mean(rows["region"][2:4])) == pytest.approx(0.3, abs=2 / 1024)


@pytest.mark.parametrize("task, train, sample", [
    ("pet", [-1.0, -1.0], [1.0, 1.0]),
    ("gfp", [-0.45, -0.45], [1.0, 1.0]),
    ("ct", [-1.0, 1.0], [-1.0, -1.0]),
])
def test_channel_batch_carries_the_phases_sign_and_gain(paper_config_path, task, train, sample):
    config = load_config(paper_config_path)
    a, b = ycrcb_batch(1)
    for phase, (cr, cb) in (("train", train), ("sample", sample)):
        rows = composition.channel_batch(a, b, regions.rules_from_config(config.regions, task, phase))
        np.testing.assert_allclose(rows["sign_gain"], [0, 0, cr, cr, cb, cb], err_msg=phase)


STAND_IN_SCHEDULE = diffusion.make_schedule("cosine", 50)


def stand_in_network(variables, x, t, train, rngs=None):
    """A network stand-in: noise = s_noise x the exact eps recovered from x_t^A, cond_A and t;
    m1 = sigmoid(p_m1 cond_A), m2 = sigmoid(p_m2 cond_B); a folding field times s_deformation."""
    p = variables["params"]
    abar = STAND_IN_SCHEDULE.alphas_cumprod[t][:, None, None, None]
    eps = (x[..., 2:3] - jnp.sqrt(abar) * x[..., 0:1]) / jnp.sqrt(1 - abar)
    columns = jnp.arange(x.shape[2], dtype=jnp.float32)[None, None, :, None]
    field = jnp.concatenate([2 * jnp.sin(columns) + x[..., 1:2], x[..., 0:1]], axis=-1)
    return unet.UNetOutput(p["noise"] * eps, jax.nn.sigmoid(p["m1"] * x[..., 0:1]),
                           jax.nn.sigmoid(p["m2"] * x[..., 1:2]), p["deformation"] * field)


@pytest.fixture(scope="module")
def stand_in_losses(paper_config_path):
    """(config, jitted (params, a, b, rules) -> (terms, network input x, network t))."""
    config = load_config(paper_config_path)
    loss_config = settings.loss_settings(config)

    @jax.jit
    def run(params, a, b, rules):
        seen = {}

        def recording_network(variables, x, t, train, rngs=None):
            seen.update(x=x, t=t)
            assert train is False and rngs is None
            return stand_in_network(variables, x, t, train)

        terms = losses.training_losses(recording_network, params, a, b, rules,
                                       jax.random.PRNGKey(3), STAND_IN_SCHEDULE, loss_config)
        return terms, seen["x"], seen["t"]

    return config, run


def as_arrays(rules):
    return jax.tree.map(jnp.asarray, rules)


# ---- training_losses against a float64 transcription of docs/method.md section 5 ----------------

PERFECT_STEPS = 50


def cosine_alphas_cumprod(steps):
    """abar_t of the cosine schedule in float64 (docs/method.md section 4):
    beta_t = min(1 - abar((t + 1) / T) / abar(t / T), 0.999), abar(s) = cos((s + 0.008) / 1.008
    pi / 2)^2, abar_t = prod (1 - beta)."""
    def abar(s):
        return np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2

    t = np.arange(steps)
    betas = np.minimum(1 - abar((t + 1) / steps) / abar(t / steps), 0.999)
    return np.cumprod(1 - betas)


PERFECT_ABAR = cosine_alphas_cumprod(PERFECT_STEPS)


def reverse_stage_of(t, steps=PERFECT_STEPS):
    """The sampler's stage of training step t (array): floor(3 (T - 1 - t) / T) (section 5)."""
    return (3 * (steps - 1 - t)) // steps


def perfect_network(variables, x, t, train, rngs=None):
    """A perfect denoiser: the exact eps from a noisy source and the condition it was noised
    from (x_t^A and the first condition A', or in stage 0, where the network is shown (B', B'),
    x_t^B and B'); m1 = m2 = 1/2 and a zero deformation field."""
    del variables, train, rngs
    sqrt_abar = jnp.sqrt(jnp.asarray(PERFECT_ABAR, jnp.float32))[t][:, None, None, None]
    noisiest = (reverse_stage_of(t) == 0)[:, None, None, None]
    x_t = jnp.where(noisiest, x[..., 3:4], x[..., 2:3])
    condition = jnp.where(noisiest, x[..., 1:2], x[..., 0:1])
    eps = (x_t - sqrt_abar * condition) / jnp.sqrt(1 - sqrt_abar ** 2)
    half = jnp.full_like(x[..., :1], 0.5)
    return unet.UNetOutput(eps, half, half, jnp.zeros(x.shape[:3] + (2,), x.dtype))


def parzen_weights(x, bins, sigma):
    """[N, bins] Gaussian soft assignment of the values of x, clipped to [-1, 1], to `bins` evenly
    spaced centres of [-1, 1]; sigma in bin widths; rows sum to 1."""
    centres = np.linspace(-1, 1, bins)
    d = (np.clip(np.ravel(x), -1, 1)[:, None] - centres) / (sigma * 2 / (bins - 1))
    w = np.exp(-0.5 * d ** 2)
    return w / w.sum(axis=1, keepdims=True)


def soft_mi_and_correlation_ratio(a, b, bins, sigma):
    """(MI in nats of the Parzen joint histogram of a and b, eta^2(b | a's soft classes))."""
    wa, wb = parzen_weights(a, bins, sigma), parzen_weights(b, bins, sigma)
    joint = wa.T @ wb / wa.shape[0]
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    used = joint > 0
    mi = np.sum(joint[used] * np.log(joint[used] / outer[used]))
    values = np.ravel(b)
    counts = wa.sum(axis=0)
    class_means = wa.T @ values / counts
    between = np.sum(counts * (class_means - values.mean()) ** 2)
    return mi, between / np.sum((values - values.mean()) ** 2)


def spect_train_rows(a, b):
    """Float64 rows (Y of each image, then Cr, then Cb) of section 5 with the spect training
    rules (Cr: R = B_c >= the 70th percentile, sign +, gain 1; Cb: R = B_c <= the 30th, sign -,
    gain 1; the percentile is the sorted value at index floor(q / 100 H W)): lists of
    (A, B_c, R, A', B', sign gain) with 2-D arrays and bool R."""
    a, b = np.asarray(a, np.float64)[..., 0], np.asarray(b, np.float64)
    rows = [(a_i, b_i[..., 0], np.ones(a_i.shape, bool), a_i, b_i[..., 0], 0.0)
            for a_i, b_i in zip(a, b)]
    for channel, (percent, above, sign_gain) in ((1, (70, True, 1.0)), (2, (30, False, -1.0))):
        for a_i, b_i in zip(a, b):
            b_c = b_i[..., channel]
            threshold = np.sort(b_c.ravel())[int(np.floor(percent / 100 * b_c.size))]
            region = b_c >= threshold if above else b_c <= threshold
            # A moved to B_c's mean and std over R (ddof cancels in the ratio), 0 outside R
            a_std = (a_i - a_i[region].mean()) / a_i[region].std() * b_c[region].std()
            cond_a = np.where(region, a_std + b_c[region].mean(), 0.0)
            rows.append((a_i, b_c, region, cond_a, b_c * region, sign_gain))
    return rows


@pytest.fixture(scope="module")
def perfect_denoiser_losses(paper_config_path):
    """(loss config, a, b, {term: float}, network input x [6, 32, 32, 4] float64, network t [6])
    of training_losses with `perfect_network` on a spect batch of two 32 px pairs."""
    config = load_config(paper_config_path)
    config.loss.correlation = "ratio"  # the oracle's second term (MIND: tests/test_registration)
    loss_config = settings.loss_settings(config)
    schedule = diffusion.make_schedule("cosine", PERFECT_STEPS)
    rules = as_arrays(regions.rules_from_config(config.regions, "spect", "train"))

    @jax.jit
    def run(a, b, rules):
        seen = {}

        def recording_network(variables, x, t, train, rngs=None):
            seen.update(x=x, t=t)
            return perfect_network(variables, x, t, train, rngs)

        # key 13 draws t = 41, 1, 17, 5, 23, 49: stages 0, 2 (Y), 1, 2 (Cr) and 1, 0 (Cb)
        terms = losses.training_losses(recording_network, {}, a, b, rules,
                                       jax.random.PRNGKey(13), schedule, loss_config)
        return terms, seen["x"], seen["t"]

    a, b = ycrcb_batch(2)
    terms, x, t = run(a, b, rules)
    return (loss_config, a, b, {name: float(value) for name, value in terms.items()},
            np.asarray(x, np.float64), np.asarray(t))


def test_training_losses_with_a_perfect_denoiser(perfect_denoiser_losses):
    """A denoiser that returns the true eps, m1 = m2 = 1/2 and a zero field: the noise term is
    0, smoothness and folding are 0, and the conditions, fusion, quality, MI and correlation
    terms equal a float64 transcription of docs/method.md section 5 (the spect training rules),
    computed from A, B and the network input's noisy sources."""
    loss_config, a, b, terms, x, t = perfect_denoiser_losses
    assert set(terms) == set(losses.TERMS)
    assert x.shape == (6, 32, 32, 4) and t.shape == (6,)
    stages = reverse_stage_of(t)
    assert set(stages) == {0, 1, 2}, f"t = {t}: every stage should be drawn (change the key)"
    assert loss_config.stage_conditions and loss_config.similarity_blur == 1.0
    rows = spect_train_rows(a, b)
    batch, pixels = 2, 32 * 32

    # conditions by stage: (B', B'), (A', B'), (A', A'); both sources noised with one eps
    for row, ((_, _, _, cond_a, cond_b, _), stage) in enumerate(zip(rows, stages)):
        shown = [(cond_b, cond_b), (cond_a, cond_b), (cond_a, cond_a)][stage]
        np.testing.assert_allclose(x[row, ..., 0], shown[0], atol=2e-5, err_msg=row)
        np.testing.assert_allclose(x[row, ..., 1], shown[1], atol=2e-5, err_msg=row)
        np.testing.assert_allclose(x[row, ..., 2] - x[row, ..., 3],
                                   np.sqrt(PERFECT_ABAR[t[row]]) * (cond_a - cond_b), atol=2e-5)

    # a perfect denoiser: the noise term is 0 up to float32 rounding (recovering eps from x_t^A
    # and the first condition in every stage gives 13); the zero field is smooth and unfolded
    assert terms["noise"] == pytest.approx(0.0, abs=0.01)
    assert terms["smoothness"] == 0.0 and terms["folding"] == 0.0

    m1 = m2 = 0.5
    fusion = quality = mi = correlation = 0.0
    for row, (a_i, b_c, region, cond_a, cond_b, sign_gain) in enumerate(rows):
        x_a, x_b = x[row, ..., 2], x[row, ..., 3]
        if row < batch:  # Y: f = m1 A + (1 - m1) B_Y, sources A and B_Y
            f_t = m1 * x_a + (1 - m1) * x_b
            fusion += (np.sum(np.abs(f_t - x_a)) + np.sum(np.abs(f_t - x_b))) / pixels
            detail = pyramid.detail(a_i, loss_config.detail.levels)  # added where B is kept
            fused = m1 * a_i + (1 - m1) * b_c + loss_config.detail.gain * (1 - m1) * detail
            quality += quality_oracle(fused, a_i, b_c, loss_config.luma_quality_weights)
        else:  # Cr / Cb: F = B' + s g m2 A', whole-frame moment matched, B_c outside R
            f_t = x_b + sign_gain * m2 * x_a
            fusion += np.sum(np.abs((f_t - m2 * x_a) * region)) / pixels
            f0 = cond_b + sign_gain * m2 * cond_a * region
            matched = published_normalize_with_ref_distribution(f0 * region, b_c * region,
                                                                (f0 * region)[2, 2])
            fused = np.where(region, np.clip(matched, -1, 1), b_c)
            source = cond_a * region * m2
            quality += quality_oracle(fused * region, source, source, loss_config.quality_weights)
        # A against B_c (Y, Cr or Cb), both blurred by 1 px, the zero field warping nothing
        blur = functools.partial(ndimage.gaussian_filter, sigma=1.0, mode="nearest", truncate=3.0)
        row_mi, eta = soft_mi_and_correlation_ratio(blur(a_i), blur(b_c), loss_config.mi_bins,
                                                    loss_config.mi_sigma)
        mi -= row_mi
        correlation += 1 - eta
    assert terms["fusion"] == pytest.approx(fusion, rel=1e-5)
    assert terms["quality"] == pytest.approx(quality / batch, rel=1e-5)
    assert terms["mi"] == pytest.approx(mi / batch, rel=1e-5)
    assert terms["correlation"] == pytest.approx(correlation / batch, rel=1e-5)


def test_gaussian_blur_matches_scipy():
    x = np.random.default_rng(4).uniform(-1, 1, (2, 12, 10, 3)).astype(np.float32)
    for sigma in (0.7, 1.0, 2.0):
        got = np.asarray(filters.gaussian_blur(jnp.asarray(x), sigma))
        expected = ndimage.gaussian_filter(x.astype(np.float64), (0, sigma, sigma, 0),
                                           mode="nearest", truncate=3.0)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal(filters.gaussian_blur(jnp.asarray(x), 0.0), x)


@pytest.fixture(scope="module")
def misaligned_pairs():
    """Six misaligned generated PET pairs of 32 px: A, B_Y [6, 32, 32, 1] in [-1, 1] and the
    fields that realign B."""
    from difffccf_jax.data import generator

    pairs = [generator.make_pair("pet", 32, seed=0, index=i, misalign_b=True,
                                 motion_strength=4.0) for i in range(6)]
    a = np.stack([color.to_unit(p.a.astype(np.float32)) for p in pairs])[..., None]
    b_y = np.stack([color.to_unit(color.rgb_to_ycrcb(p.b)[..., 0]) for p in pairs])[..., None]
    field = np.stack([p.displacement for p in pairs])
    return (jnp.asarray(a, jnp.float32), jnp.asarray(b_y, jnp.float32),
            jnp.asarray(field))


@pytest.mark.parametrize("correlation", ["ratio", "ncc"])
def test_registration_terms_prefer_the_true_realignment(paper_config_path, misaligned_pairs,
                                                        correlation):
    """On every pair, B_Y warped (black outside) by the saved field scores better than B as
    given, than B moved by the opposite field, and than a constant half-pixel shift (which
    interpolation's smoothing would reward without the blur)."""
    loss_config = settings.loss_settings(
        load_config(paper_config_path, (("loss.correlation", f"'{correlation}'"),
                                        ("loss.mi_bins", "16"))))
    assert loss_config.similarity_blur == 1.0
    a, b_y, field = misaligned_pairs
    black_y = float(color.black_ycrcb_unit()[0])
    fields = dict(given=0 * field, true=field, opposite=-field, half_pixel=0 * field + 0.5)
    scores = {name: np.asarray(sum(registration.registration_similarity(a, b_y, value, black_y,
                                                                  loss_config)))
              for name, value in fields.items()}
    for other in ("given", "opposite", "half_pixel"):
        assert np.all(scores["true"] < scores[other]), other
    assert np.mean(scores["half_pixel"]) > np.mean(scores["given"])


def test_a_field_optimised_for_the_configured_registration_loss_realigns_b(
        tiny_config_path, misaligned_pairs):
    """Adam on a free per-pixel displacement field per pair, minimising MI + the correlation
    ratio + smoothness (the per-pixel design before the control grid, docs/method.md section
    7): with smoothness weight 30 B's alignment error to the saved field drops; at 1 the same
    optimisation makes it worse (B is deformed towards A's look instead)."""
    import optax

    from difffccf_jax.model import registration

    config = load_config(tiny_config_path)
    config.loss.correlation = "ratio"
    loss_config = settings.loss_settings(config)
    a, b_y, true = misaligned_pairs
    black_y = float(color.black_ycrcb_unit()[0])

    def final_error(smoothness_weight):
        def objective(field):
            mi, correlation = registration.registration_similarity(a, b_y, field, black_y,
                                                             loss_config)
            return jnp.mean(config.loss.weights.mi * mi
                            + config.loss.weights.correlation * correlation
                            + smoothness_weight * regularisers.smoothness(field))

        optimizer = optax.adam(0.02)

        def step(carry, _):
            field, state = carry
            updates, state = optimizer.update(jax.grad(objective)(field), state)
            return (field + updates, state), None

        field = jnp.zeros_like(true)
        (field, _), _ = jax.lax.scan(step, (field, optimizer.init(field)), None, length=300)
        return float(jnp.mean(jnp.linalg.norm(true - field, axis=-1)))

    before = float(jnp.mean(jnp.linalg.norm(true, axis=-1)))
    assert final_error(30.0) < 0.85 * before
    assert final_error(1.0) > before


# The network outputs each term depends on.
DEPENDS_ON = {
    "noise": {"noise"},
    # The published Y fusion term |f - x_a| + |f - x_b| = |x_a - x_b| does not depend on m1.
    "fusion": {"m2"},
    "quality": {"m1", "m2"},
    "mi": {"deformation"},
    "correlation": {"deformation"},
    "smoothness": {"deformation"},
    "folding": {"deformation"},
}


def test_training_losses_use_the_configured_statistics(paper_config_path):
    """loss_config.region_statistics reaches the clean fused estimate: only the quality term
    (which reads it) changes with it, and by the quality of the Cr/Cb estimates made with that
    choice (a stand-in network whose masks do not depend on its input)."""
    config = load_config(paper_config_path)
    rules = as_arrays(regions.rules_from_config(config.regions, "spect", "train"))
    a, b = ycrcb_batch(6)
    masks = jax.nn.sigmoid(uniform(7, (6, 32, 32, 1), -3.0, 3.0))

    def network(variables, x, t, train, rngs=None):
        zeros = jnp.zeros_like(x[..., :1])
        return unet.UNetOutput(zeros, masks, masks, jnp.concatenate([zeros, zeros], axis=-1))

    terms = {}
    for statistics in regions.STATISTICS:
        config.regions_statistics = statistics
        loss_config = settings.loss_settings(config)
        terms[statistics] = jax.jit(functools.partial(
            losses.training_losses, network, key=jax.random.PRNGKey(3),
            schedule=STAND_IN_SCHEDULE, loss_config=loss_config))({}, a, b, rules)
    whole, in_region = terms[regions.WHOLE_FRAME], terms[regions.IN_REGION]
    for name in losses.TERMS:
        if name != "quality":
            assert float(whole[name]) == float(in_region[name]), name
    rows = composition.channel_batch(a, b, rules)
    masked_a = (rows["cond_a"] * rows["region"] * masks)[2:]
    chroma_quality = {}
    for statistics in regions.STATISTICS:
        fused = losses.clean_fused_estimate(rows["cond_a"], rows["cond_b"], rows["b3"], masks,
                                            masks, rows["region"], rows["chroma"],
                                            rows["sign_gain"], statistics)[2:]
        chroma_quality[statistics] = float(jnp.sum(losses.quality_loss(
            fused * rows["region"][2:], masked_a, masked_a, config.loss.quality_weights))) / 2
    assert abs(chroma_quality[regions.WHOLE_FRAME] - chroma_quality[regions.IN_REGION]) > 1e-2
    assert (float(whole["quality"]) - float(in_region["quality"]) == pytest.approx(
        chroma_quality[regions.WHOLE_FRAME] - chroma_quality[regions.IN_REGION], rel=1e-3))


def test_each_term_depends_on_its_network_outputs(stand_in_losses):
    """Changing one stand-in output at a time changes exactly the terms that read it (the field
    folds, so the folding term is active)."""
    config, run = stand_in_losses
    rules = as_arrays(regions.rules_from_config(config.regions, "ct", "train"))
    a, b = ycrcb_batch(5)
    base = {"noise": 0.5, "m1": 1.0, "m2": 1.5, "deformation": 1.0}
    reference = run(base, a, b, rules)[0]
    assert all(np.isfinite(float(v)) for v in reference.values())
    assert float(reference["folding"]) > 0
    readers = {name: set() for name in losses.TERMS}
    for output in base:
        changed = run({**base, output: base[output] + 0.25}, a, b, rules)[0]
        for name in losses.TERMS:
            # m1's exact independence in the fusion term shows as float32 rounding (1e-7).
            if abs(float(changed[name] - reference[name])) > 1e-4 * abs(float(reference[name])):
                readers[name].add(output)
    assert readers == DEPENDS_ON


def test_training_losses_gradient_reaches_every_parameter_group(tiny_config_path):
    """The tiny network (one level, to compile quickly), dropout on, random parameters (the
    zero-initialised deformation head would stop the registration gradient at the head): the
    terms are finite and the gradient of their weighted total reaches every parameter group,
    the deformation head and the fusion decoder behind it included."""
    config = load_config(tiny_config_path)
    config.model.channel_mult = (1,)
    config.model.num_res_blocks = 1
    size = 16
    model = unet.model_from_config(config.model)
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)},
                                               jnp.zeros((1, size, size, 4)),
                                               jnp.zeros((1,), jnp.int32))["params"])
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda leaf: jnp.asarray(rng.normal(0, 0.1, leaf.shape), jnp.float32),
                          shapes)
    schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.steps)
    rules = jax.tree.map(jnp.asarray, regions.rules_from_config(config.regions, "spect", "train"))
    loss_config = settings.loss_settings(config)

    def total(params, a, b, rules):
        terms = losses.training_losses(model.apply, params, a, b, rules, jax.random.PRNGKey(5),
                                       schedule, loss_config, jax.random.PRNGKey(6))
        return losses.weighted_total(terms, config.loss.weights), terms

    grads, terms = jax.jit(jax.grad(total, has_aux=True))(params, *ycrcb_batch(4, size=size),
                                                          rules)
    assert all(np.isfinite(float(value)) for value in terms.values())
    assert set(grads) == {"input_conv", "time_embed", "encoder", "middle", "graformer",
                          "noise_decoder", "noise_head", "fusion_decoder", "mask1_head",
                          "mask2_head", "deformation_head"}
    for group, tree in grads.items():
        leaves = jax.tree.leaves(tree)
        assert all(np.all(np.isfinite(leaf)) for leaf in leaves), group
        assert sum(float(jnp.sum(jnp.abs(leaf))) for leaf in leaves) > 0, group


def test_loss_settings_from_config_checks_fields(paper_config_path):
    config = load_config(paper_config_path)
    built = settings.loss_settings(config)
    assert built == settings.LossSettings(
        loss_scale=128.0, quality_weights=(30.0, 40.0, 40.0),
        luma_quality_weights=(0.0, 10.0, 40.0), stage_conditions=True, mi_bins=32,
        mi_sigma=0.5, correlation="mind", ncc_window=9, similarity_blur=1.0,
        region_statistics=regions.WHOLE_FRAME, registration_pass=True, registration_size=64,
        diffusion_crop=0, detail=settings.FusionDetail(gain=0.2, levels=4))
    config.loss.luma_quality_weights = (1.0, -1.0, 0.0)
    with pytest.raises(UserError, match="loss.luma_quality_weights"):
        settings.loss_settings(config)
    config.loss.luma_quality_weights = (0.0, 10.0, 40.0)
    config.regions_statistics = "in_region"
    assert settings.loss_settings(config).region_statistics == regions.IN_REGION
    config.regions_statistics = "per_batch"
    with pytest.raises(UserError, match="regions_statistics"):
        settings.loss_settings(config)
    config.regions_statistics = "whole_frame"
    config.model.compat = True  # the published model has no field to score
    assert not settings.loss_settings(config).registration_pass
    config.model.compat = False
    config.loss.correlation = "ncc"
    a = uniform(20, (1, 16, 16, 1))
    _, correlation = similarity.similarity_loss(a, 3 * a, settings.loss_settings(config))
    assert float(correlation[0]) == pytest.approx(0.0, abs=1e-3)
    config.loss.correlation = "mse"
    with pytest.raises(UserError, match="loss.correlation"):
        settings.loss_settings(config)
    config.loss.correlation = "ratio"
    config.loss.similarity_blur = -1.0
    with pytest.raises(UserError, match="loss.similarity_blur"):
        settings.loss_settings(config)
