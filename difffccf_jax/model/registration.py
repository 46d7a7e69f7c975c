"""Registration (docs/method.md sections 5 and 7): warping by a displacement field with the image's
own background as fill, the field's regularisers, the field on a grid of control points, the
registration pass that training and the sampler share, the similarity of A and the warped B
(mutual information, correlation ratio, local NCC, MIND), and the sampler's refinement of the
network's field.

Coordinates are corner-aligned pixel indices: pixel (row y, column x) sits at (x, y) with
x in 0..W-1 and y in 0..H-1. A displacement field u [B, H, W, 2] holds, per output pixel, the
shift in pixels along x (channel 0, columns) and along y (channel 1, rows); the deformation is
phi(x, y) = (x + u_x, y + u_y).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from difffccf_jax.data import images


BILINEAR = "bilinear"
BICUBIC = "bicubic"
INTERPOLATIONS = (BILINEAR, BICUBIC)
KEYS_A = -0.5  # the Keys cubic convolution kernel's parameter: exact on quadratics


def interpolation_taps(fraction, interpolation):
    """((offset, weight), ...) along one axis for a sample at floor + `fraction` (in [0, 1)):
    the two neighbours of linear interpolation, or the four of Keys' cubic convolution (a =
    -0.5), which keeps more of the image's sharpness (its weights sum to 1 and may be
    negative)."""
    if interpolation == BILINEAR:
        return ((0, 1.0 - fraction), (1, fraction))
    a = KEYS_A

    def near(t):  # |t| <= 1
        return ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0

    def far(t):  # 1 < |t| < 2
        return ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a

    return ((-1, far(1.0 + fraction)), (0, near(fraction)), (1, near(1.0 - fraction)),
            (2, far(2.0 - fraction)))


def warp(image, displacement, fill=0.0, interpolation=BILINEAR):
    """image [B, H, W, C] sampled at (x + u_x, y + u_y): bilinear or bicubic (`interpolation`),
    `fill` (broadcastable to the image) outside it.

    Images in [-1, 1] need the fill of their own background (`background`), not 0: a mid-grey
    border skews the similarity measures of section 5 towards no warp at all. Differentiable with
    respect to the image and the displacement [B, H, W, 2] (pixels). Bicubic values can leave the
    image's range by a little (the kernel's negative lobes)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r}: expected one of {INTERPOLATIONS}")
    image = image - fill
    batch, height, width, channels = image.shape
    rows = jnp.arange(height, dtype=displacement.dtype)[None, :, None]
    cols = jnp.arange(width, dtype=displacement.dtype)[None, None, :]
    x = cols + displacement[..., 0]
    y = rows + displacement[..., 1]
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    flat = image.reshape(batch, height * width, channels)
    result = jnp.zeros(image.shape, image.dtype)
    for dy, wy in interpolation_taps(y - y0, interpolation):
        for dx, wx in interpolation_taps(x - x0, interpolation):
            xi = x0.astype(jnp.int32) + dx
            yi = y0.astype(jnp.int32) + dy
            inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
            index = jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1)
            values = jnp.take_along_axis(flat, index.reshape(batch, -1, 1), axis=1)
            weight = jnp.where(inside, wx * wy, 0.0)[..., None]
            result = result + weight * values.reshape(image.shape)
    return result + fill


def pass_input(a, b):
    """The network input of the registration pass, [B, H, W, 4]: the clean pair as
    [A, B_Y, A, B_Y] (a [B, H, W, 1]; b [B, H, W, C], its first channel B's Y), shown at
    t = 0. Training (`losses.training_losses`) and the sampler use the same."""
    return jnp.concatenate([a, b[..., :1]] * 2, axis=-1)


def reduced_size(height, width, size):
    """(h, w): an H x W image shrunk, keeping its aspect, so that its longer side is `size`
    pixels (never enlarged; size 0: unchanged)."""
    scale = max(1.0, max(height, width) / size) if size else 1.0
    return max(1, round(height / scale)), max(1, round(width / scale))


def resize_field(field, height, width):
    """A field [B, h, w, 2] in pixels of its h x w image resampled (bilinearly, pixel centres
    aligned as jax.image.resize aligns images) to height x width, its x component scaled by
    width / w and its y component by height / h: the same motion in the new image's pixels."""
    small_height, small_width = field.shape[1:3]
    if (small_height, small_width) == (height, width):
        return field
    resized = jax.image.resize(field, (field.shape[0], height, width, 2), "linear")
    return resized * jnp.array([width / small_width, height / small_height], field.dtype)


def predict_field(network, a, b, size=0):
    """The registration pass: the field [B, H, W, 2] (pixels) that warps B onto A, from
    `network` (x [B, h, w, 4], t [B] -> UNetOutput) applied to the clean pair [A, B_Y, A, B_Y]
    at t = 0 (`pass_input`), shrunk to `size` pixels a side first (`reduced_size`;
    antialiased bilinear), the field then brought back to H x W by `resize_field`. Training and
    the sampler both call it. A fixed size shows the network the anatomy at one scale whatever
    the pair's pixel count."""
    height, width = a.shape[1:3]
    small = reduced_size(height, width, size)
    x = pass_input(a, b)
    if small != (height, width):
        x = jax.image.resize(x, (x.shape[0], *small, x.shape[-1]), "linear", antialias=True)
    out = network(x, jnp.zeros((a.shape[0],), jnp.int32))
    return resize_field(out.deformation, height, width)


def background(image):
    """The fill of `warp` for images [B, H, W, C]: each image's own background, the per-channel
    median of its border pixels (`images.border_median`), [B, 1, 1, C], without gradient.
    Black for PET on black, dark blue for a JET-mapped CT."""
    return jax.lax.stop_gradient(images.border_median(image, jnp)[:, None, None, :])


def jacobian_determinant(displacement):
    """det of the Jacobian of (x, y) -> (x + u_x, y + u_y), [B, H, W], by central differences
    (one-sided at the border), exact for affine fields."""
    u_x, u_y = displacement[..., 0], displacement[..., 1]
    dux_dy, dux_dx = jnp.gradient(u_x, axis=(1, 2))
    duy_dy, duy_dx = jnp.gradient(u_y, axis=(1, 2))
    return (1.0 + dux_dx) * (1.0 + duy_dy) - dux_dy * duy_dx


def folding_penalty(displacement):
    """Mean over pixels of max(0, -det J): how much the deformation folds, [B]."""
    return jnp.mean(jnp.maximum(-jacobian_determinant(displacement), 0.0), axis=(1, 2))


def smoothness(displacement):
    """Mean squared forward difference of the field along x and along y, summed over both
    directions and both components, [B]."""
    d_rows = displacement[:, 1:] - displacement[:, :-1]
    d_cols = displacement[:, :, 1:] - displacement[:, :, :-1]
    return (jnp.sum(d_rows ** 2, axis=(1, 2, 3)) / (d_rows.shape[1] * d_rows.shape[2])
            + jnp.sum(d_cols ** 2, axis=(1, 2, 3)) / (d_cols.shape[1] * d_cols.shape[2]))


def strain_energy(displacement):
    """Mean over pixels of |sym grad u|^2 of linear elasticity (forward differences), [B]; see
    `registration_loss`."""
    along_x = displacement[:, :-1, 1:] - displacement[:, :-1, :-1]  # [B, H - 1, W - 1, 2]
    along_y = displacement[:, 1:, :-1] - displacement[:, :-1, :-1]
    return jnp.mean(along_x[..., 0] ** 2 + along_y[..., 1] ** 2
                    + 0.5 * (along_y[..., 0] + along_x[..., 1]) ** 2, axis=(1, 2))


# ---- a low-dimensional field: a grid of control points, interpolated bilinearly ----------------

def interpolation_matrix(size, points):
    """[size, points] float32: linear interpolation from `points` >= 2 control points, the first
    on pixel 0 and the last on pixel size - 1 (corner-aligned), to every pixel."""
    position = np.arange(size) * (points - 1) / max(size - 1, 1)
    left = np.clip(np.floor(position).astype(int), 0, points - 2)
    weight = position - left
    matrix = np.zeros((size, points))
    matrix[np.arange(size), left] = 1.0 - weight
    matrix[np.arange(size), left + 1] = weight
    return matrix.astype(np.float32)


def grid_to_field(control, height, width):
    """The field [B, height, width, C] bilinearly interpolated from control points
    [B, G_y, G_x, C] on a regular corner-aligned grid (exact for affine fields)."""
    rows = interpolation_matrix(height, control.shape[1])
    cols = interpolation_matrix(width, control.shape[2])
    return jnp.einsum("hg,bgkc,wk->bhwc", rows, control, cols)


def field_to_grid(field, points):
    """The control points [B, points, points, C] whose bilinear field (`grid_to_field`) is the
    least-squares fit of `field` [B, H, W, C]: a linear projection that reproduces constant and
    affine fields exactly."""
    rows = np.linalg.pinv(interpolation_matrix(field.shape[1], points)).astype(np.float32)
    cols = np.linalg.pinv(interpolation_matrix(field.shape[2], points)).astype(np.float32)
    return jnp.einsum("gh,bhwc,kw->bgkc", rows, field, cols)


VALUE_RANGE = (-1.0, 1.0)  # the intensity range of images
NCC_EPS = 1e-6
LOG_EPS = 1e-10
MIND_RADIUS = 2  # pixels between a pixel and the four neighbours its MIND descriptor compares
MIND_SIGMA = 1.0  # the Gaussian patch (pixels) over which those differences are summed
CORRELATIONS = ("ratio", "ncc", "mind")  # the second similarity term (`similarity_loss`)


# ---- the similarity of A and the warped B (training's registration terms, the refinement) -------

def soft_bin_weights(x, bins, sigma, value_range=VALUE_RANGE):
    """Parzen (Gaussian) assignment of each pixel of x [B, H, W, 1] to `bins` evenly spaced
    centres spanning value_range (both ends included); sigma in bin widths. [B, H*W, bins],
    each row sums to 1."""
    low, high = value_range
    centres = jnp.linspace(low, high, bins)
    width = (high - low) / (bins - 1)
    values = jnp.clip(x.reshape(x.shape[0], -1, 1), low, high)
    logits = -0.5 * ((values - centres) / (sigma * width)) ** 2
    return jax.nn.softmax(logits, axis=-1)


def soft_joint_histogram(a, b, bins, sigma):
    """Joint probability table of the soft-binned intensities of a and b [B, H, W, 1],
    [B, bins, bins]."""
    weights_a = soft_bin_weights(a, bins, sigma)
    weights_b = soft_bin_weights(b, bins, sigma)
    return jnp.einsum("bnk,bnl->bkl", weights_a, weights_b) / weights_a.shape[1]


def mutual_information(a, b, bins=32, sigma=0.5):
    """Differentiable mutual information (nats) of a and b [B, H, W, 1] from a Parzen joint
    histogram, [B]. MI(x, x) is at most the entropy of x's soft histogram and reaches it as
    sigma -> 0 for values on the bin centres."""
    joint = soft_joint_histogram(a, b, bins, sigma)
    p_a = jnp.sum(joint, axis=2, keepdims=True)
    p_b = jnp.sum(joint, axis=1, keepdims=True)
    return jnp.sum(joint * jnp.log((joint + LOG_EPS) / (p_a * p_b + LOG_EPS)), axis=(1, 2))


def correlation_ratio(a, b, bins=32, sigma=0.5):
    """Correlation ratio eta^2(b | a) in [0, 1], [B]: the share of b's variance explained by
    a's (soft-binned) intensity classes; 1 when b is a function of a, about 0 when independent."""
    weights = soft_bin_weights(a, bins, sigma)  # [B, N, K]
    values = b.reshape(b.shape[0], -1)
    mean = jnp.mean(values, axis=1, keepdims=True)
    counts = jnp.sum(weights, axis=1)  # [B, K]
    class_means = jnp.einsum("bnk,bn->bk", weights, values) / jnp.maximum(counts, LOG_EPS)
    between = jnp.sum(counts * (class_means - mean) ** 2, axis=1)
    total = jnp.sum((values - mean) ** 2, axis=1)
    return between / (total + LOG_EPS)


def filter_valid(maps, kernel):
    """Each channel of maps [B, H, W, C] correlated with the 2-D kernel [k, k], no padding.
    Separable kernels are many times faster through `filter_separable`."""
    channels = maps.shape[-1]
    weights = jnp.tile(kernel[:, :, None, None].astype(maps.dtype), (1, 1, 1, channels))
    return jax.lax.conv_general_dilated(maps, weights, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=channels)


def window_moments(a, b, kernel):
    """Windowed means, variances and covariance of single-channel a and b [B, H, W, 1]."""
    means = filter_valid(jnp.concatenate([a, b, a * a, b * b, a * b], axis=-1), kernel)
    mu_a, mu_b, aa, bb, ab = jnp.split(means, 5, axis=-1)
    return mu_a, mu_b, aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b


def band_matrix(size, taps):
    """[size - k + 1, size] float32: the valid correlation of a length-`size` signal with the
    1-D `taps` [k] as a matrix (row i holds the taps in columns i..i+k-1)."""
    rows = size - len(taps) + 1
    matrix = sum(tap * np.eye(rows, size, k=offset) for offset, tap in enumerate(taps))
    return matrix.astype(np.float32)


def filter_separable(maps, taps_y, taps_x):
    """Each channel of maps [B, H, W, C] correlated with the 2-D kernel outer(taps_y, taps_x),
    no padding, [B, H - k_y + 1, W - k_x + 1, C] (the SSIM windows and Sobel filters of
    losses.py, `gaussian_blur`): one 1-D pass along each axis, as products with band matrices,
    which XLA runs many times faster than a depthwise 2-D convolution. HIGHEST precision keeps
    float32 on GPUs (not TF32)."""
    height, width = maps.shape[1:3]
    return jnp.einsum("yh,bhwc,xw->byxc", band_matrix(height, taps_y), maps,
                      band_matrix(width, taps_x), precision=jax.lax.Precision.HIGHEST)


def gaussian_blur(x, sigma):
    """x [B, H, W, C] blurred by a Gaussian of standard deviation `sigma` pixels (truncated at
    3 sigma, edge pixels repeated outside the image); x itself for sigma 0."""
    if sigma == 0:
        return x
    radius = max(1, int(3 * sigma + 0.5))
    padded = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    profile = gaussian_profile(2 * radius + 1, sigma)
    return filter_separable(padded, profile, profile)


def shifted(x, dx, dy):
    """x [B, H, W, C] read at (x + dx, y + dy) (integer offsets), edge pixels repeated."""
    radius = max(abs(dx), abs(dy))
    padded = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    height, width = x.shape[1:3]
    return padded[:, radius + dy:radius + dy + height, radius + dx:radius + dx + width]


def mind_descriptor(x, radius=MIND_RADIUS, sigma=MIND_SIGMA):
    """The modality independent neighbourhood descriptor (MIND, Heinrich et al. 2012) of
    x [B, H, W, 1], [B, H, W, 4]: for the four neighbours at `radius` pixels along x and y,
    exp(-D_r / V), with D_r the Gaussian-weighted (sigma) patch distance sum (x - x_r)^2 and
    V the mean of the four D_r, divided by its largest entry. It describes the local structure,
    not the intensities, so two modalities of one anatomy have similar descriptors."""
    offsets = ((radius, 0), (-radius, 0), (0, radius), (0, -radius))
    distances = gaussian_blur(jnp.concatenate([(x - shifted(x, dx, dy)) ** 2
                                               for dx, dy in offsets], axis=-1), sigma)
    variance = jnp.mean(distances, axis=-1, keepdims=True)
    variance = variance + 1e-3 * jnp.mean(variance, axis=(1, 2, 3), keepdims=True) + LOG_EPS
    descriptor = jnp.exp(-distances / variance)
    return descriptor / jnp.max(descriptor, axis=-1, keepdims=True)


def mind_distance(a, b):
    """Mean over pixels of the L1 distance between the MIND descriptors of a and b
    [B, H, W, 1], [B]: 0 for identical local structure, at most 4."""
    return jnp.sum(jnp.mean(jnp.abs(mind_descriptor(a) - mind_descriptor(b)), axis=(1, 2)),
                   axis=-1)


def local_ncc(a, b, window=9):
    """Mean over windows of the squared local correlation of a and b [B, H, W, 1]: in [0, 1],
    1 when b is locally an affine function of a, [B]."""
    box = jnp.full((window, window), 1.0 / window ** 2)
    _, _, var_a, var_b, cov = window_moments(a, b, box)
    return jnp.mean(cov ** 2 / (var_a * var_b + NCC_EPS), axis=(1, 2, 3))


def gaussian_profile(size, sigma):
    """Normalised 1-D Gaussian [size] (NumPy): the normalised 2-D window is its outer product
    with itself (`filter_separable`; also the SSIM window of losses.py)."""
    offsets = np.arange(size) - (size - 1) / 2
    profile = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    return profile / profile.sum()


def similarity_loss(a, warped_b, loss_config):
    """(MI term, correlation term) per image, [B] each: -MI and 1 - correlation (ratio or NCC),
    or with correlation 'mind' the MIND distance (`mind_distance`) as the second term.
    loss_config: any object with mi_bins, mi_sigma, correlation and ncc_window
    (settings.LossSettings, `Refinement`)."""
    mi = mutual_information(a, warped_b, loss_config.mi_bins, loss_config.mi_sigma)
    if loss_config.correlation == "mind":
        return -mi, mind_distance(a, warped_b)
    if loss_config.correlation == "ratio":
        correlation = correlation_ratio(a, warped_b, loss_config.mi_bins, loss_config.mi_sigma)
    else:
        correlation = local_ncc(a, warped_b, loss_config.ncc_window)
    return -mi, 1.0 - correlation


def blurred_and_warped(a, b, deformation, background, loss_config):
    """(A, B warped by `deformation`), both blurred by loss_config.similarity_blur first (so that
    the smoothing of bilinear interpolation adds little): what the similarity measures compare.
    `background` (broadcastable to b) comes in from outside (`background`)."""
    blur = functools.partial(gaussian_blur, sigma=loss_config.similarity_blur)
    return blur(a), warp(blur(b), deformation, background)


def registration_similarity(a, b, deformation, background, loss_config):
    """(MI term, correlation term) per image [B] of A against single-channel B warped by
    `deformation` (`blurred_and_warped`)."""
    return similarity_loss(*blurred_and_warped(a, b, deformation, background, loss_config),
                           loss_config)


def registration_terms(a, b, deformation, loss_config):
    """(MI term, correlation term) per pair [B] of the field `deformation` [B, H, W, 2]: A
    against each channel of B (YCrCb [B, H, W, 3]) warped by it with B's own background as fill
    (`background`), summed over the three channels. The same as `registration_similarity` per
    channel; the channels share one blur of A, one blur of B and one warp."""
    blurred_a, warped_b = blurred_and_warped(a, b, deformation, background(b), loss_config)
    mi, correlation = zip(*(similarity_loss(blurred_a, warped_b[..., c:c + 1], loss_config)
                            for c in range(b.shape[-1])))
    return sum(mi), sum(correlation)


# ---- test-time refinement of the network's field ---------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Refinement:
    """How the sampler refines the registration pass's field (hashable; a static argument;
    built by `settings.refinement_settings`).

    steps: Adam steps (0: the network's field as it is); learning_rate: Adam's step, pixels per
    step on the control points; grid: control points a side (`field_to_grid`); mi_bins,
    mi_sigma, correlation, ncc_window, similarity_blur: the similarity, as training's
    (settings.LossSettings's fields of the same names); weights: (mi, correlation, smoothness,
    folding), training's reference weights; strain: the weight of the field's strain energy
    (`registration_loss`), the refinement's own term; from_no_warp: also refine from no warp
    and keep, per pair, the refined field of lower loss (`refine_field`)."""
    steps: int
    learning_rate: float
    grid: int
    mi_bins: int
    mi_sigma: float
    correlation: str
    ncc_window: int
    similarity_blur: float
    weights: tuple
    strain: float
    from_no_warp: bool


def registration_loss(a, b, field, settings):
    """The unsupervised registration loss of `field` [B, H, W, 2] per pair, [B]: training's
    terms (`registration_terms`, smoothness, folding) weighted by settings.weights
    (mi, correlation, smoothness, folding), plus settings.strain times the strain energy of
    linear elasticity: the mean over pixels of |sym grad u|^2 = (du_x/dx)^2 + (du_y/dy)^2
    + (du_x/dy + du_y/dx)^2 / 2 (forward differences). It is 0 for a translation and for a
    rotation to first order (u = theta (-y, x)), 2 s^2 for a scaling by 1 + s and g^2 / 2 for a
    shear u = (g y, 0): it holds the field near a rigid motion without penalising rotation,
    which the smoothness term penalises like a scaling. `settings` a `Refinement`."""
    w_mi, w_correlation, w_smoothness, w_folding = settings.weights
    mi, correlation = registration_terms(a, b, field, settings)
    return (w_mi * mi + w_correlation * correlation + w_smoothness * smoothness(field)
            + w_folding * folding_penalty(field) + settings.strain * strain_energy(field))


def refine_field(a, b, field, settings):
    """The field [B, H, W, 2] refined for each pair by `settings.steps` Adam steps on the
    unsupervised registration loss (`registration_loss`: training's terms, `registration_terms`
    plus the weighted smoothness and folding, and the strain term), starting from `field`
    projected onto settings.grid x settings.grid control points (instance optimisation, as ANTs
    optimises a pair and VoxelMorph refines its prediction). a [B, H, W, 1], b YCrCb
    [B, H, W, 3]; each pair's points see only its own loss.

    With settings.from_no_warp it also refines each pair from no warp, in the same batch, and
    keeps the refined field of lower loss, as ANTs tries several initial transforms and keeps
    the best metric: a network field that starts the optimisation in a worse basin than the
    pair as given then does no harm, for twice the time."""
    if not settings.from_no_warp:
        return _refine_from(a, b, field, settings)
    pairs = field.shape[0]
    a2, b2 = jnp.concatenate([a, a]), jnp.concatenate([b, b])
    refined = _refine_from(a2, b2, jnp.concatenate([field, jnp.zeros_like(field)]), settings)
    loss = registration_loss(a2, b2, refined, settings)
    keep_network_start = (loss[:pairs] <= loss[pairs:])[:, None, None, None]
    return jnp.where(keep_network_start, refined[:pairs], refined[pairs:])


def _refine_from(a, b, field, settings):
    """`refine_field` from the one start `field`."""
    height, width = a.shape[1:3]

    def objective(control):
        return jnp.sum(registration_loss(a, b, grid_to_field(control, height, width), settings))

    optimizer = optax.adam(settings.learning_rate)

    def step(carry, _):
        control, state = carry
        updates, state = optimizer.update(jax.grad(objective)(control), state)
        return (control + updates, state), None

    control = field_to_grid(field, settings.grid)
    (control, _), _ = jax.lax.scan(step, (control, optimizer.init(control)), None,
                                   length=settings.steps)
    return grid_to_field(control, height, width)
