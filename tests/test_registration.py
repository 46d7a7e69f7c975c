"""Registration against exact shifts, SciPy, analytic Jacobians and known answers: the warp and
B's own background as its fill, the regularisers, the field on control points, the registration
pass shared by training and sampling, the head motion of the generator, MIND, and a loss that
prefers the true field on generated pairs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from difffccf_jax.model import (control_grid, filters, refinement, registration, regularisers,
                                similarity, warping)

H, W = 12, 16
warp = jax.jit(warping.warp)  # one compile for every [2, H, W, 3] test below


@pytest.fixture(scope="module")
def image():
    return jnp.asarray(np.random.default_rng(0).uniform(size=(2, H, W, 3)), jnp.float32)


def constant_field(dx, dy, batch=2):
    return jnp.broadcast_to(jnp.array([dx, dy], jnp.float32), (batch, H, W, 2))


def test_zero_field_is_identity(image):
    np.testing.assert_array_equal(warp(image, constant_field(0.0, 0.0)), image)


def test_integer_shift_is_shifted_image_with_zero_padding(image):
    """u = (2, -1): output pixel (y, x) reads input (y - 1, x + 2); outside the image it is 0."""
    warped = np.asarray(warp(image, constant_field(2.0, -1.0)))
    expected = np.zeros_like(warped)
    expected[:, 1:, :W - 2] = np.asarray(image)[:, :H - 1, 2:]
    np.testing.assert_allclose(warped, expected, atol=1e-6)


def test_fill_is_what_comes_in_from_outside(image):
    """With a per-channel fill, the integer shift reads the fill outside the image and the
    image inside, exactly."""
    fill = jnp.array([-1.0, 0.25, 0.5])
    warped = np.asarray(jax.jit(warping.warp)(image, constant_field(2.0, -1.0), fill))
    expected = np.broadcast_to(np.asarray(fill), warped.shape).copy()
    expected[:, 1:, :W - 2] = np.asarray(image)[:, :H - 1, 2:]
    np.testing.assert_allclose(warped, expected, atol=1e-6)


def test_fractional_field_matches_scipy_bilinear(image):
    """Random sub-pixel field against scipy.ndimage.map_coordinates (order 1, zero outside)."""
    field = jnp.asarray(np.random.default_rng(1).uniform(-2.5, 2.5, (2, H, W, 2)), jnp.float32)
    warped = warp(image, field)
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    img, u = np.asarray(image, np.float64), np.asarray(field, np.float64)
    for b in range(2):
        coords = [rows + u[b, ..., 1], cols + u[b, ..., 0]]
        for c in range(3):
            expected = ndimage.map_coordinates(img[b, ..., c], coords, order=1,
                                               mode="grid-constant", cval=0.0)
            np.testing.assert_allclose(warped[b, ..., c], expected, atol=1e-5)


def test_warp_gradients(image):
    """d warp / d u_x at a pure horizontal shift of 0.3 px is I[y, x+1] - I[y, x] (finite,
    non-zero); d sum(warp) / d image holds the bilinear weights."""
    field = constant_field(0.3, 0.0)
    grad_field = jax.jit(jax.grad(lambda u: warp(image, u)[0, 5, 7, 1]))(field)
    assert np.all(np.isfinite(grad_field))
    expected = image[0, 5, 8, 1] - image[0, 5, 7, 1]
    assert float(grad_field[0, 5, 7, 0]) == pytest.approx(float(expected), rel=1e-4)
    # d/du_y at u_y = 0 takes the forward cell: I[y+1, x+0.3] - I[y, x+0.3].
    row_below = 0.7 * image[0, 6, 7, 1] + 0.3 * image[0, 6, 8, 1]
    row_here = 0.7 * image[0, 5, 7, 1] + 0.3 * image[0, 5, 8, 1]
    assert float(grad_field[0, 5, 7, 1]) == pytest.approx(float(row_below - row_here), rel=1e-4)
    grad_image = jax.jit(jax.grad(lambda img: jnp.sum(warp(img, field))))(image)
    assert np.all(np.isfinite(grad_image)) and float(jnp.sum(jnp.abs(grad_image))) > 0
    # Each source pixel gets the bilinear weights that sample it: 0.7 + 0.3 = 1, except the
    # first column, which no output reads as a right neighbour (0.7 only).
    np.testing.assert_allclose(grad_image[:, :, 1:], 1.0, atol=1e-6)
    np.testing.assert_allclose(grad_image[:, :, 0], 0.7, atol=1e-6)


bicubic_warp = jax.jit(functools.partial(warping.warp, interpolation=warping.BICUBIC))


def keys_kernel(t):
    """Keys' cubic convolution kernel (a = -0.5) at distance t, float64."""
    t = np.abs(t)
    return np.where(t <= 1, 1.5 * t ** 3 - 2.5 * t ** 2 + 1,
                    np.where(t < 2, -0.5 * t ** 3 + 2.5 * t ** 2 - 4 * t + 2, 0.0))


def test_bicubic_integer_shift_reads_the_fill_outside(image):
    fill = jnp.array([-1.0, 0.25, 0.5])
    warped = np.asarray(bicubic_warp(image, constant_field(2.0, -1.0), fill))
    expected = np.broadcast_to(np.asarray(fill), warped.shape).copy()
    expected[:, 1:, :W - 2] = np.asarray(image)[:, :H - 1, 2:]
    np.testing.assert_allclose(warped, expected, atol=1e-6)


def test_bicubic_matches_a_float64_sum_over_the_kernel(image):
    """Random sub-pixel field: each output is sum_k,l I[k, l] w(y' - k) w(x' - l) over every
    input pixel (0 outside), the kernel evaluated by distance."""
    field = np.random.default_rng(2).uniform(-2.5, 2.5, (2, H, W, 2))
    warped = np.asarray(bicubic_warp(image, jnp.asarray(field, jnp.float32)))
    img = np.asarray(image, np.float64)
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    for b in range(2):
        ys = rows + field[b, ..., 1]
        xs = cols + field[b, ..., 0]
        wy = keys_kernel(ys[..., None] - np.arange(H))  # [H, W, H]
        wx = keys_kernel(xs[..., None] - np.arange(W))  # [H, W, W]
        expected = np.einsum("yxk,yxl,klc->yxc", wy, wx, img[b])
        np.testing.assert_allclose(warped[b], expected, atol=2e-5)


def test_bicubic_is_exact_on_quadratics_and_bilinear_is_not():
    """A quadratic image shifted by (0.3, -0.6) px: Keys' kernel reproduces it exactly away from
    the border; the linear one is off by its curvature."""
    rows, cols = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64),
                             indexing="ij")

    def quadratic(y, x):
        return 0.01 * (x - 7.0) ** 2 - 0.02 * (y - 5.0) * (x - 3.0) + 0.015 * y ** 2 + 0.1

    image = jnp.asarray(np.broadcast_to(quadratic(rows, cols)[None, ..., None], (2, H, W, 3)),
                        jnp.float32)
    field = constant_field(0.3, -0.6)
    expected = quadratic(rows - 0.6, cols + 0.3)
    inner = (slice(None), slice(3, H - 2), slice(2, W - 3), 0)
    np.testing.assert_allclose(np.asarray(bicubic_warp(image, field))[inner],
                               np.broadcast_to(expected, (2, H, W))[inner[:3]], atol=1e-5)
    assert np.abs(np.asarray(warp(image, field))[inner] - expected[inner[1:3]]).max() > 1e-3


def test_unknown_interpolation_is_refused(image):
    with pytest.raises(ValueError, match="interpolation 'nearest'"):
        warping.warp(image, constant_field(0.0, 0.0), interpolation="nearest")


def affine_field(matrix, offset):
    """u(p) = (M - I) p + c for p = (x, y), [1, H, W, 2]."""
    rows, cols = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64),
                             indexing="ij")
    points = np.stack([cols, rows], axis=-1)
    u = points @ (np.asarray(matrix) - np.eye(2)).T + np.asarray(offset)
    return jnp.asarray(u[None], jnp.float32)


@pytest.mark.parametrize("matrix", [[[1.2, 0.3], [-0.1, 0.9]], [[0.5, 0.0], [0.0, 0.5]],
                                    [[-0.4, 0.2], [0.1, 1.0]]])
def test_jacobian_determinant_of_affine_map(matrix):
    field = affine_field(matrix, (1.5, -2.0))
    det = regularisers.jacobian_determinant(field)
    np.testing.assert_allclose(det, np.full((1, H, W), np.linalg.det(matrix)), atol=1e-4)
    # Folding is -det where the map reverses orientation, 0 otherwise.
    expected_folding = max(0.0, -np.linalg.det(matrix))
    assert float(regularisers.folding_penalty(field)[0]) == pytest.approx(expected_folding,
                                                                            abs=1e-4)


def test_smoothness_of_linear_field():
    """u_x = a x + b y, u_y = c x + d y: every forward difference is constant, so the penalty is
    a^2 + b^2 + c^2 + d^2; a constant field has none."""
    a, b, c, d = 0.2, -0.1, 0.05, 0.3
    field = affine_field([[1 + a, b], [c, 1 + d]], (0.0, 0.0))
    assert float(regularisers.smoothness(field)[0]) == pytest.approx(a * a + b * b + c * c + d * d,
                                                                     rel=1e-4)
    assert float(regularisers.smoothness(constant_field(1.0, -2.0))[0]) == 0.0


# ---- B's own background as the fill -------------------------------------------------------------

def jet_background_b(size=24, seed=0):
    """A JET-mapped grey image (as the loader shows CT's MRI or ADNI's PET) in YCrCb [1, S, S, 3]
    in [-1, 1]: dark blue background (0-3 grey levels of noise), a bright blob that touches the
    left border."""
    from difffccf_jax import color

    rows, cols = np.mgrid[0:size, 0:size]
    grey = 200.0 * np.exp(-((rows - size / 2) ** 2 + cols ** 2) / (2 * (size / 4) ** 2))
    grey += np.random.default_rng(seed).uniform(0, 3, grey.shape)
    rgb = color.apply_colormap(np.round(grey)[..., None].astype(np.uint8), "jet")
    return jnp.asarray(color.to_unit(color.rgb_to_ycrcb(rgb))[None], jnp.float32)


def test_background_is_each_images_border_median():
    """registration.background: the per-channel median of the first and last rows and columns
    (np.median of exactly those pixels), per image; the blob touching the border does not move
    it off JET's dark blue."""
    from difffccf_jax import color

    b = jnp.concatenate([jet_background_b(seed=0), -jnp.ones((1, 24, 24, 3))])
    fill = np.asarray(registration.background(b))
    assert fill.shape == (2, 1, 1, 3)
    for i in range(2):
        image = np.asarray(b[i])
        border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
        np.testing.assert_allclose(fill[i, 0, 0], np.median(border, axis=0), atol=1e-6)
    np.testing.assert_allclose(fill[1, 0, 0], -1.0)
    dark_blue = color.to_unit(color.rgb_to_ycrcb(color.apply_colormap(
        np.zeros((1, 1), np.uint8)[..., None], "jet")))[0, 0]
    np.testing.assert_allclose(fill[0, 0, 0], dark_blue, atol=0.05)  # JET of 0..3 grey levels
    assert fill[0, 0, 0, 2] > 0.3  # Cb: blue, far from black's 0.004


def test_sampler_warp_fills_with_bs_background_not_black():
    """sampling.warp_b (the sampler's warp) moves B by 5 px: the columns that come in from
    outside the image are B's own background, JET's dark blue, not black; the rest is B
    shifted."""
    from difffccf_jax.inference import sampling

    b = jet_background_b()
    shift = jnp.broadcast_to(jnp.array([5.0, 0.0]), (1, 24, 24, 2))
    warped = np.asarray(sampling.warp_b(b, shift))
    fill = np.asarray(registration.background(b))[0, 0, 0]
    np.testing.assert_allclose(warped[0, :, -5:], np.broadcast_to(fill, (24, 5, 3)), atol=1e-6)
    np.testing.assert_allclose(warped[0, :, :-5], np.asarray(b)[0, :, 5:], atol=1e-6)
    assert warped[0, :, -5:, 2].min() > 0.3  # Cb of dark blue; black has Cb 0.004


def test_training_similarity_fills_with_bs_background(paper_config_path):
    """registration.registration_terms warps every channel with the pair's background: for a pure
    shift and for a random sub-pixel field its terms, and their gradients with respect to the
    field, equal the sum of each channel warped with that fill by hand; a black fill differs."""
    from difffccf_jax.config_cli import load_config
    from difffccf_jax.model.settings import loss_settings

    b = jnp.concatenate([jet_background_b(seed=1)] * 2)
    a = b[..., :1] * 0.5
    loss_config = loss_settings(load_config(paper_config_path, (
        ("loss.mi_bins", "16"), ("loss.correlation", "ratio"), ("loss.similarity_blur", "1.0"))))
    fill = registration.background(b)

    def by_channel(field):
        terms = [registration.registration_similarity(a, b[..., c:c + 1], field,
                                                      fill[..., c:c + 1], loss_config)
                 for c in range(3)]
        return sum(t[0] for t in terms), sum(t[1] for t in terms)

    shift = jnp.broadcast_to(jnp.array([4.0, -3.0]), (2, 24, 24, 2))
    random_field = jnp.asarray(np.random.default_rng(3).uniform(-2, 2, (2, 24, 24, 2)),
                               jnp.float32)
    for field in (shift, random_field):
        got = registration.registration_terms(a, b, field, loss_config)
        expected = by_channel(field)
        for term in range(2):
            np.testing.assert_allclose(got[term], expected[term], rtol=1e-5)
            gradients = [jax.grad(lambda f: jnp.sum(terms(f)[term]))(field)
                         for terms in (lambda f: registration.registration_terms(a, b, f,
                                                                                 loss_config),
                                       by_channel)]
            np.testing.assert_allclose(*gradients, rtol=1e-4, atol=1e-6)
    with_fill, _ = registration.registration_similarity(a, b[..., :1], shift, fill[..., :1],
                                                       loss_config)
    with_black, _ = registration.registration_similarity(a, b[..., :1], shift, -1.0, loss_config)
    assert abs(float(with_black[0] - with_fill[0])) > 1e-3  # the fill matters


# ---- the field on a grid of control points ------------------------------------------------------

def test_interpolation_matrix_is_linear_interpolation_between_corner_aligned_points():
    matrix = control_grid.interpolation_matrix(9, 3)  # control points on pixels 0, 4, 8
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    np.testing.assert_array_equal(matrix[[0, 4, 8]], np.eye(3))
    np.testing.assert_allclose(matrix[2], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(matrix[7], [0.0, 0.25, 0.75])


@pytest.mark.parametrize("points", [2, 3, 5])
def test_grid_reproduces_affine_fields_and_projects(points):
    """An affine field is reproduced exactly by its control points; the least-squares
    projection is a projection (applying it twice changes nothing)."""
    field = affine_field([[1.03, -0.05], [0.04, 0.98]], (1.5, -2.0))
    control = control_grid.field_to_grid(field, points)
    np.testing.assert_allclose(control_grid.grid_to_field(control, H, W), field, atol=1e-4)
    noise = jnp.asarray(np.random.default_rng(points).normal(size=(1, H, W, 2)), jnp.float32)
    once = control_grid.grid_to_field(control_grid.field_to_grid(noise, points), H, W)
    twice = control_grid.grid_to_field(control_grid.field_to_grid(once, points), H, W)
    np.testing.assert_allclose(twice, once, atol=1e-4)


def test_deformation_head_on_a_grid_is_smooth_and_bounded():
    """unet.deformation_field: a constant raw output gives the constant max tanh(raw) (the
    sampler tests' shifting network relies on it); a noisy one gives a bilinear field of G x G
    control points, bounded by max_displacement and smoother than the per-pixel field."""
    from difffccf_jax.model import unet

    constant = jnp.full((1, H, W, 2), 0.3)
    np.testing.assert_allclose(unet.deformation_field(constant, 4.0, 3), 4.0 * np.tanh(0.3),
                               rtol=1e-5)
    raw = jnp.asarray(np.random.default_rng(0).normal(0, 30, (1, H, W, 2)), jnp.float32)
    field = unet.deformation_field(raw, 4.0, 3)
    assert float(jnp.abs(field).max()) <= 4.0
    # linear between control points (of 16 columns: at x = 0, 7.5 and 15)
    np.testing.assert_allclose(field[0, :, 0:6] - 2 * field[0, :, 1:7] + field[0, :, 2:8], 0.0,
                               atol=1e-4)
    assert float(regularisers.smoothness(field)[0]) < float(
        regularisers.smoothness(unet.deformation_field(raw, 4.0, 0))[0])


def test_resize_field_keeps_the_motion():
    """A constant shift of (1.5, -0.5) px at 16 x 12 is (3, -1.5) px at 32 x 36; an affine
    field stays the same motion in the new pixels (away from the border, where bilinear
    resizing is exact)."""
    shift = jnp.broadcast_to(jnp.array([1.5, -0.5]), (1, 12, 16, 2))
    np.testing.assert_allclose(warping.resize_field(shift, 36, 32),
                               np.broadcast_to([3.0, -1.5], (1, 36, 32, 2)), rtol=1e-6)
    rows, cols = np.mgrid[0:16, 0:16].astype(np.float64)
    small = jnp.asarray(np.stack([0.1 * (rows - 7.5), -0.05 * (cols - 7.5)], -1)[None],
                        jnp.float32)  # u(p) = L (p - centre), pixel centres at 7.5
    big = np.asarray(warping.resize_field(small, 32, 32))
    rows, cols = np.mgrid[0:32, 0:32].astype(np.float64)
    expected = np.stack([0.1 * (rows - 15.5), -0.05 * (cols - 15.5)], -1)  # same L, 2x the px
    np.testing.assert_allclose(big[0, 2:-2, 2:-2], expected[2:-2, 2:-2], atol=1e-4)


def test_predict_field_shows_the_network_the_shrunk_clean_pair_at_t0():
    """registration.predict_field: the network sees [A, B_Y, A, B_Y] shrunk to `size` at t = 0,
    and its field comes back in the pair's pixels."""
    from difffccf_jax.model import unet

    a = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 1)), jnp.float32)
    b = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    seen = {}

    def network(x, t):
        seen.update(x=x, t=t)
        field = jnp.broadcast_to(jnp.array([0.5, 1.0]), x.shape[:3] + (2,))
        return unet.UNetOutput(x[..., :1], x[..., :1], x[..., :1], field)

    field = registration.predict_field(network, a, b, 16)
    assert seen["x"].shape == (2, 16, 16, 4)
    np.testing.assert_array_equal(seen["t"], 0)
    shrunk = jax.image.resize(registration.pass_input(a, b), (2, 16, 16, 4), "linear",
                              antialias=True)
    np.testing.assert_allclose(seen["x"], shrunk, atol=1e-6)
    np.testing.assert_allclose(field, np.broadcast_to([1.0, 2.0], (2, 32, 32, 2)), rtol=1e-6)
    registration.predict_field(network, a, b, 0)  # size 0: the pair as it is
    np.testing.assert_array_equal(seen["x"], registration.pass_input(a, b))
    np.testing.assert_array_equal(seen["x"][..., 0], seen["x"][..., 2])
    np.testing.assert_array_equal(seen["x"][..., 1:2], b[..., :1])


# ---- the misalignment a user has: rigid head motion plus an elastic part ------------------------

@pytest.mark.parametrize("size", [128, 256])
def test_head_motion_has_a_mean_error_of_2_to_4_px_and_no_change_of_scale(size):
    """misalign.head_motion at 128 and 256 px: the field that realigns B has a mean end-point
    error in [2, 4] px (20 draws, spread over the range), its linear part is a rotation
    (orthogonal, det 1: no zoom or shear), and its mean shift varies from pair to pair."""
    from difffccf_jax.data import misalign

    errors, shifts = [], []
    x, y = misalign.pixel_grid(size)
    for i in range(20):
        motion = misalign.head_motion(np.random.default_rng([7, i]), size)
        rotation = motion.linear + np.eye(2)
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(2), atol=1e-12)
        _, field = misalign.apply_motion(np.zeros((size, size), np.float32), motion)
        ux, uy = motion(x + field[..., 0], y + field[..., 1])
        np.testing.assert_allclose(field, -np.stack([ux, uy], -1), atol=1e-3)  # d = -u(p + d)
        errors.append(np.mean(np.linalg.norm(field, axis=-1)))
        shifts.append(field.mean(axis=(0, 1)))
    assert 2.0 - 0.05 <= min(errors) and max(errors) <= 4.0 + 0.05
    assert max(errors) - min(errors) > 1.0
    assert np.std(np.array(shifts), axis=0).min() > 0.8  # pixels: translations differ per pair


def test_generator_head_motion_setting():
    """make_pair(motion='head') saves the head motion's field (drawn from the misalignment's
    own stream); an unknown motion is refused by name."""
    from difffccf_jax.data import generator, misalign
    from difffccf_jax.errors import UserError

    pair = generator.make_pair("pet", 128, seed=3, index=2, misalign_b=True, motion="head",
                               anatomy="phantom")
    motion = misalign.head_motion(np.random.default_rng([3, 0, 2, 1]), 128)
    _, expected = misalign.apply_motion(np.zeros((128, 128), np.float32), motion)
    np.testing.assert_array_equal(pair.displacement, expected)
    assert 2.0 <= np.mean(np.linalg.norm(pair.displacement, axis=-1)) <= 4.05
    with pytest.raises(UserError, match="unknown motion 'spin'"):
        generator.make_pair("pet", 32, 0, 0, misalign_b=True, motion="spin")


def test_make_data_head_motion(tmp_path):
    """make-data --misalign --motion head writes the generator's head-motion pair and field."""
    import os

    from difffccf_jax import cli
    from difffccf_jax.data import generator

    out = str(tmp_path / "data")
    assert cli.main(["make-data", "--task", "pet", "--num", "1", "--size", "48", "--seed", "2",
                     "--out", out, "--misalign", "--motion", "head", "--anatomy",
                     "phantom"]) == 0
    expected = generator.make_pair("pet", 48, seed=2, index=0, misalign_b=True, motion="head",
                                   anatomy="phantom")
    field = np.load(os.path.join(out, "HARVARD-PET-MRI", "displacement", "1.npy"))
    np.testing.assert_array_equal(field, expected.displacement)
    assert 2.0 <= np.mean(np.linalg.norm(field, axis=-1)) <= 4.05


def test_true_field_pairs_undo_the_motion(tmp_path):
    """registration_check.write_true_field_pairs: B warped by its saved true field (the
    sampler's bicubic warp) is far closer to B before the motion than the moved B is; A and the
    field are copied unchanged."""
    import os

    from difffccf_jax.data import generator, layouts
    from difffccf_jax.tools import experiment, registration_check

    layout = experiment.task_layout("pet")
    roots = {name: str(tmp_path / name) for name in ("test", "aligned", "true_field")}
    for name, moved in (("test", True), ("aligned", False)):
        generator.write_task(roots[name], layout, 2, 96, 4, misalign_b=moved,
                             anatomy="phantom", motion="head")
    registration_check.write_true_field_pairs(roots["test"], roots["true_field"], layout,
                                              warping.BICUBIC)
    listed = {name: layouts.list_pairs(root, layout) for name, root in roots.items()}
    for moved, aligned, undone in zip(*(listed[name] for name in ("test", "aligned", "true_field"))):
        read = {name: layouts.read_pair_uint8(pair, layout)
                for name, pair in (("moved", moved), ("aligned", aligned), ("undone", undone))}
        np.testing.assert_array_equal(read["undone"][0], read["moved"][0])
        np.testing.assert_array_equal(np.load(undone.displacement), np.load(moved.displacement))
        target = read["aligned"][1].astype(float)
        error = {name: np.abs(read[name][1] - target).mean() for name in ("moved", "undone")}
        assert error["undone"] < 0.25 * error["moved"], error
        assert os.path.basename(undone.b) == os.path.basename(moved.b)


# ---- the similarity: MIND -----------------------------------------------------------------------

def test_mind_sees_structure_not_intensity():
    """The MIND distance of an image and an affine change of its intensities (another
    'modality' of the same structure) is ~0; a 2 px shift of the same image is far; the
    descriptor is in (0, 1] with 1 the closest neighbour."""
    from difffccf_jax.training import losses

    a = filters.gaussian_blur(jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 40, 40, 1)),
                                         jnp.float32), 1.5)
    descriptor = np.asarray(similarity.mind_descriptor(a))
    assert descriptor.shape == (2, 40, 40, 4)
    assert descriptor.min() > 0 and np.allclose(descriptor.max(axis=-1), 1.0)
    np.testing.assert_allclose(similarity.mind_distance(a, -3.0 * a + 0.5), 0.0, atol=1e-3)
    shifted = jnp.roll(a, 2, axis=2)
    assert float(jnp.min(similarity.mind_distance(a, shifted))) > 0.3


def test_shifted_reads_with_edges_repeated():
    from difffccf_jax.training import losses

    x = jnp.arange(12.0).reshape(1, 3, 4, 1)
    np.testing.assert_array_equal(filters.shifted(x, 1, 0)[0, :, :, 0],
                                  [[1, 2, 3, 3], [5, 6, 7, 7], [9, 10, 11, 11]])
    np.testing.assert_array_equal(filters.shifted(x, 0, -1)[0, :, :, 0],
                                  [[0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7]])


# ---- the registration loss prefers the true field at the new misalignment scale ----------------

@pytest.fixture(scope="module")
def head_motion_pairs():
    """Six generated pairs per task (pet, spect) of 128 px whose B the head motion moved: A
    [6, 128, 128, 1], B YCrCb [6, 128, 128, 3] in [-1, 1] and the true fields."""
    from difffccf_jax import color
    from difffccf_jax.data import generator

    sets = {}
    for task in ("pet", "spect"):
        pairs = [generator.make_pair(task, 128, seed=5, index=i, misalign_b=True, motion="head",
                                     anatomy=generator.DEFAULT_ANATOMY) for i in range(6)]
        a = np.stack([color.to_unit(p.a.astype(np.float32)) for p in pairs])[..., None]
        b = np.stack([color.to_unit(color.rgb_to_ycrcb(p.b.astype(np.float32))) for p in pairs])
        sets[task] = (jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                      jnp.asarray(np.stack([p.displacement for p in pairs])))
    return sets


def affine_part(field):
    """The least-squares affine fit [B, H, W, 2] of each field [B, H, W, 2]."""
    height, width = field.shape[1:3]
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    basis = np.stack([cols.ravel(), rows.ravel(), np.ones(height * width, np.float32)], 1)
    return jnp.asarray(np.stack([
        basis @ np.linalg.lstsq(basis, np.asarray(u).reshape(-1, 2), rcond=None)[0]
        for u in field]).reshape(field.shape))


@pytest.mark.parametrize("task", ["pet", "spect"])
def test_registration_loss_prefers_the_true_field(paper_config_path, head_motion_pairs, task):
    """Training's registration loss (MI + correlation term over B's three channels, B's
    background as fill, plus the smoothness and folding weights; the refinement's loss without
    its strain term) of the true field that realigns B is lower than that of no warp, on every
    pair; also lower than the opposite field, and than the true field's translation alone (the
    rotation and elastic part count). The refinement's loss, strain term included, prefers the
    true field's affine part to no warp and to the opposite field on every pair; it does not
    prefer the generator's per-pixel elastic field to no warp on every pair (strain 100 buys a
    near-rigid field: docs/method.md section 7)."""
    from difffccf_jax.config_cli import load_config
    from difffccf_jax.model.settings import refinement_settings

    paper = refinement_settings(load_config(paper_config_path))
    a, b, true = head_motion_pairs[task]
    translation = jnp.broadcast_to(true.mean(axis=(1, 2), keepdims=True), true.shape)
    for settings, field, others in (
            (dataclasses.replace(paper, strain=0.0), true,
             (("zero", 0 * true), ("opposite", -true), ("translation", translation))),
            (paper, affine_part(true), (("zero", 0 * true), ("opposite", -true)))):
        # the pairs are arguments, not constants: pet and spect share the compiled program
        loss = jax.jit(functools.partial(refinement.registration_loss, settings=settings))
        at_field = np.asarray(loss(a, b, field))
        for name, other in others:
            assert np.all(at_field < np.asarray(loss(a, b, other))), (settings.strain, name)


# ---- training: the registration pass is the sampler's ------------------------------------------

@pytest.mark.slow
def test_training_registration_pass_scores_the_samplers_field(tiny_config_path):
    """With loss.registration_pass, training_losses first calls the network once on the clean
    pairs as the sampler does (`registration.predict_field`: [A, B_Y, A, B_Y] shrunk to
    registration_size, t = 0, train=False); mi and correlation are those of that field
    (`registration_terms`), smoothness and folding its regularisers; with diffusion_crop the
    diffusion rows see windows of that side and the registration pass the whole pair."""
    from difffccf_jax.config_cli import load_config
    from difffccf_jax.model import diffusion, regions, unet
    from difffccf_jax.model.settings import loss_settings
    from difffccf_jax.training import losses

    config = load_config(tiny_config_path)
    loss_config = dataclasses.replace(loss_settings(config),
                                      registration_pass=True, registration_size=16,
                                      diffusion_crop=24)
    rules = jax.tree.map(jnp.asarray, regions.rules_from_config(config.regions, "pet", "train"))
    schedule = diffusion.make_schedule("cosine", 50)
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 1)), jnp.float32)
    b = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    calls = []

    def network(variables, x, t, train, rngs=None):
        calls.append((x.shape, t, train))
        rows, cols = jnp.mgrid[0:x.shape[1], 0:x.shape[2]].astype(jnp.float32)
        field = variables["params"] * jnp.stack([0.1 * rows - 0.8, 0.05 * cols], -1)
        field = jnp.broadcast_to(field, x.shape[:3] + (2,))
        return unet.UNetOutput(x[..., :1], jax.nn.sigmoid(x[..., :1]),
                               jax.nn.sigmoid(x[..., 1:2]), field + 0.01 * x[..., 1:3])

    terms = losses.training_losses(network, jnp.float32(2.0), a, b, rules,
                                   jax.random.PRNGKey(0), schedule, loss_config,
                                   jax.random.PRNGKey(1))
    (pass_shape, pass_t, pass_train), (main_shape, _, main_train) = calls
    assert pass_shape == (2, 16, 16, 4) and not pass_train
    np.testing.assert_array_equal(pass_t, 0)
    assert main_shape == (6, 24, 24, 4) and main_train
    field = registration.predict_field(lambda x, t: network({"params": 2.0}, x, t, False),
                                       a, b, 16)
    mi, correlation = registration.registration_terms(a, b, field, loss_config)
    assert terms["mi"] == pytest.approx(float(jnp.mean(mi)), rel=1e-5)
    assert terms["correlation"] == pytest.approx(float(jnp.mean(correlation)), rel=1e-5)
    assert terms["smoothness"] == pytest.approx(
        float(jnp.mean(regularisers.smoothness(field))), rel=1e-5)
    assert terms["folding"] == pytest.approx(
        float(jnp.mean(regularisers.folding_penalty(field))), rel=1e-5, abs=1e-7)
    assert terms["smoothness"] > 0


def test_published_model_trains_without_a_registration_pass(paper_config_path):
    """The paper config's registration pass is off in compatibility mode: the published model
    has no field and its fixed bottleneck takes 256 px pairs only."""
    from difffccf_jax.config_cli import load_config
    from difffccf_jax.model.settings import loss_settings

    config = load_config(paper_config_path)
    assert loss_settings(config).registration_pass
    config.model.compat = True
    assert not loss_settings(config).registration_pass


# ---- the sampler's refinement of the network's field ------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("task, ratio", [("pet", 0.5), ("spect", 0.6)])
def test_refinement_realigns_b_without_the_true_field(paper_config_path, head_motion_pairs, task,
                                                      ratio):
    """refinement.refine_field with the paper config's settings (sampling.refine_steps of the
    training loss plus the strain term on the 5 x 5 control points): from no warp it lowers
    every pair's loss and brings the mean end-point error of the generated pairs below issue
    18's share of its value (0.5 x PET, 0.6 x SPECT); from the true field it stays near it."""
    from difffccf_jax.config_cli import load_config
    from difffccf_jax.model.settings import refinement_settings

    settings = refinement_settings(load_config(paper_config_path))
    assert settings.steps == 50 and settings.grid == 5 and settings.correlation == "mind"
    assert settings.learning_rate == 0.1 and settings.strain == 100.0 and settings.from_no_warp
    settings = dataclasses.replace(settings, from_no_warp=False)  # each start on its own
    a, b, true = head_motion_pairs[task]
    # the pairs are arguments, not constants: pet and spect share the compiled programs
    refine = jax.jit(functools.partial(refinement.refine_field, settings=settings))
    loss = jax.jit(functools.partial(refinement.registration_loss, settings=settings))
    before = float(jnp.mean(jnp.linalg.norm(true, axis=-1)))
    no_warp = jnp.zeros_like(true)
    from_zero = refine(a, b, no_warp)
    assert np.all(np.asarray(loss(a, b, from_zero)) < np.asarray(loss(a, b, no_warp)))
    assert float(jnp.mean(jnp.linalg.norm(true - from_zero, axis=-1))) < ratio * before
    from_true = refine(a, b, true)
    assert float(jnp.mean(jnp.linalg.norm(true - from_true, axis=-1))) < 0.35 * before


def test_two_starts_keep_each_pairs_refined_field_of_lower_loss(head_motion_pairs,
                                                               paper_config_path):
    """refine_field with from_no_warp refines from the given field and from no warp in one
    batch and keeps, per pair, the result of lower loss: here the first pair starts at its
    true field (that start is kept) and the second at the opposite of it, 6 px off (the start
    from no warp is kept). Each equals the refinement from that start alone. On the pairs'
    central 64 x 64, to compile quickly."""
    a, b, true = (x[:2, 32:96, 32:96] for x in head_motion_pairs["pet"])
    from difffccf_jax.config_cli import load_config
    from difffccf_jax.model.settings import refinement_settings

    two_starts = dataclasses.replace(refinement_settings(load_config(paper_config_path)),
                                     steps=10)
    assert two_starts.from_no_warp
    one_start = dataclasses.replace(two_starts, from_no_warp=False)
    start = jnp.stack([true[0], -2 * true[1]])
    kept = refinement.refine_field(a, b, start, two_starts)
    from_start = refinement.refine_field(a, b, start, one_start)
    from_no_warp = refinement.refine_field(a, b, jnp.zeros_like(start), one_start)
    loss = refinement.registration_loss(jnp.concatenate([a, a]), jnp.concatenate([b, b]),
                                          jnp.concatenate([from_start, from_no_warp]), two_starts)
    assert float(loss[0]) < float(loss[2]) and float(loss[3]) < float(loss[1])
    np.testing.assert_allclose(kept[0], from_start[0], atol=1e-4)
    np.testing.assert_allclose(kept[1], from_no_warp[1], atol=1e-4)


def test_strain_term_known_answers(paper_config_path):
    """registration_loss's strain term (settings.strain times the mean of (du_x/dx)^2 +
    (du_y/dy)^2 + (du_x/dy + du_y/dx)^2 / 2) on linear fields: 0 for a translation and a
    rotation to first order, 2 s^2 for a scaling by 1 + s, g^2 / 2 for a shear (g y, 0)."""
    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.uniform(-1, 1, (1, H, W, 1)), jnp.float32)
    b = jnp.asarray(rng.uniform(-1, 1, (1, H, W, 3)), jnp.float32)
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float32)
    fields = {"translation": (np.stack([np.full_like(cols, 1.5), np.full_like(rows, -0.5)], -1),
                              0.0),
              "rotation": (0.05 * np.stack([-rows, cols], -1), 0.0),
              "scaling": (0.02 * np.stack([cols, rows], -1), 2 * 0.02 ** 2),
              "shear": (0.1 * np.stack([rows, np.zeros_like(rows)], -1), 0.1 ** 2 / 2)}
    from difffccf_jax.config_cli import load_config
    from difffccf_jax.model.settings import refinement_settings

    settings = dataclasses.replace(refinement_settings(load_config(paper_config_path)),
                                   strain=0.0)
    with_strain = dataclasses.replace(settings, strain=7.0)
    for name, (field, expected) in fields.items():
        field = jnp.asarray(field[None])
        term = (refinement.registration_loss(a, b, field, with_strain)
                - refinement.registration_loss(a, b, field, settings))
        assert float(term[0]) == pytest.approx(7.0 * expected, abs=1e-5), name


def test_refinement_settings_are_checked(paper_config_path):
    """refinement_settings rejects negative steps and strain weights, a step that is not
    positive and a refine_from_no_warp that is not a boolean, naming the field."""
    from difffccf_jax.config_cli import load_config
    from difffccf_jax.errors import UserError
    from difffccf_jax.model.settings import refinement_settings

    for key, value in (("refine_steps", -1), ("refine_strain", -1.0),
                       ("refine_learning_rate", 0.0)):
        config = load_config(paper_config_path)
        config.sampling[key] = value
        with pytest.raises(UserError, match=f"sampling.{key}: expected .*got"):
            refinement_settings(config)
    config = load_config(paper_config_path)
    with config.unlocked():  # a config file's value of another type
        del config.sampling["refine_from_no_warp"]
        config.sampling.refine_from_no_warp = "yes"
    with pytest.raises(UserError, match="sampling.refine_from_no_warp: expected True or False"):
        refinement_settings(config)


def test_warp_interpolation_setting(paper_config_path):
    """sampling.warp_interpolation: the paper config's bicubic; another value is refused by
    name."""
    from difffccf_jax.config_cli import load_config
    from difffccf_jax.errors import UserError
    from difffccf_jax.model.settings import sampler_settings

    config = load_config(paper_config_path)
    assert sampler_settings(config).warp_interpolation == warping.BICUBIC
    config.sampling.warp_interpolation = "nearest"
    with pytest.raises(UserError, match="sampling.warp_interpolation: expected one of bilinear, "
                                        "bicubic, got 'nearest'"):
        sampler_settings(config)


# ---- the check command's acceptance numbers -----------------------------------------------------

def test_registration_summary_known_answers():
    """registration_check.registration_summary on hand-made rows: the mean errors, their ratio,
    Pearson r of true and predicted mean shifts (1 for a predicted shift proportional to the
    true one, -1 for the opposite) and the verdict against the task's threshold."""
    from difffccf_jax.tools import experiment, registration_check

    true = [(2.0, -1.0), (-1.0, 3.0), (0.5, 0.0)]
    rows = [experiment.RegistrationRow(f"{i}.png", np.array(t), 0.8 * np.array(t) * [1, -1],
                                       before, after)
            for i, (t, before, after) in enumerate(zip(true, (2.0, 3.0, 4.0), (1.0, 1.0, 1.6)))]
    summary = registration_check.registration_summary(rows, "pet")
    assert summary["before_px"] == pytest.approx(3.0) and summary["after_px"] == pytest.approx(1.2)
    assert summary["ratio"] == pytest.approx(0.4) and summary["meets_ratio"]
    assert summary["pearson_x"] == pytest.approx(1.0) and summary["pearson_y"] == pytest.approx(-1.0)
    assert not summary["meets_pearson"]
    assert not registration_check.registration_summary(rows, "spect")["meets_pearson"]
    assert registration_check.registration_summary(rows, "ct")["max_ratio"] is None


def test_check_config_trains_whole_pairs_with_cropped_diffusion_rows():
    """`difffccf registration`'s config: the demo's for the task and budget, whole pairs to the
    step (the registration pass needs them), the diffusion rows on windows, the budget checked
    every few steps, refinement at sampling."""
    from difffccf_jax.tools import registration_check

    config = registration_check.check_config("spect", 128, 3.0, "/data", diffusion_crop=32,
                                             registration_size=32, sampling_steps=7,
                                             refine_steps=9)
    assert (config.data.tasks, config.data.root) == (("spect",), "/data")
    assert config.data.image_size == 128 and config.data.crop_size == 0
    assert config.loss.diffusion_crop == 32 and config.loss.registration_size == 32
    assert config.train.steps_per_epoch == registration_check.BUDGET_CHECK_STEPS
    assert config.train.max_minutes == 3.0
    assert config.sampling.steps == 7 and config.sampling.refine_steps == 9
    assert (config.sampling.refine_learning_rate, config.sampling.refine_strain) == (0.1, 100.0)
    assert config.sampling.refine_from_no_warp
    assert config.sampling.warp_interpolation == warping.BICUBIC
