"""The fusion metrics: hand-computed answers, invariances, and straightforward oracles."""

import collections
import itertools
import math

import numpy as np
import pytest
from scipy import signal

from difffccf_jax import colour_difference, functional_region
from difffccf_jax.evaluation import metrics


def _two_level(shape=(8, 8), low=0.0, high=255.0):
    """Left half `low`, right half `high`."""
    image = np.full(shape, low)
    image[:, shape[1] // 2:] = high
    return image


@pytest.fixture(scope="module")
def triple():
    """Rounded 0..255 images F, A, B [64, 64] with texture, a flat patch in every image (the
    flat-region branches of VIF) and a region where F is A's negative (VIF's g < 0 branch)."""
    rng = np.random.default_rng(7)
    rows, cols = np.mgrid[0:64, 0:64]
    a = 120 + 80 * np.sin(rows / 5.0) * np.cos(cols / 7.0) + rng.normal(0, 10, (64, 64))
    blob = np.exp(-((rows - 30) ** 2 + (cols - 40) ** 2) / 200.0)
    b = 90 + 120 * blob + rng.normal(0, 15, (64, 64))
    f = 0.6 * a + 0.4 * b + rng.normal(0, 5, (64, 64))
    f[40:60, 5:25] = 255 - a[40:60, 5:25]
    for image in (a, b, f):
        image[2:22, 2:22] = 100
    return tuple(np.round(np.clip(x, 0, 255)) for x in (f, a, b))


# ---------------------------------------------------------------- hand-computed answers


def test_entropy_known_answers():
    assert metrics.entropy(_two_level()) == pytest.approx(1.0, abs=1e-12)
    four_levels = np.repeat(np.array([[0.0, 1.0, 2.0, 3.0]]), 4, axis=0)
    assert metrics.entropy(four_levels) == pytest.approx(2.0, abs=1e-12)
    assert metrics.entropy(np.full((5, 5), 17.0)) == 0.0


def test_standard_deviation_and_spatial_frequency_known_answers():
    assert metrics.standard_deviation(_two_level(low=0, high=2)) == pytest.approx(1.0)
    checkerboard = 10.0 * (np.indices((6, 6)).sum(axis=0) % 2)
    # every horizontal and vertical neighbour differs by 10: SF = sqrt(100 + 100)
    assert metrics.spatial_frequency(checkerboard) == pytest.approx(10 * math.sqrt(2), abs=1e-12)


def test_average_gradient_of_a_ramp():
    ramp = 3.0 * np.tile(np.arange(9.0), (5, 1))  # slope 3 along x, 0 along y
    assert metrics.average_gradient(ramp) == pytest.approx(3 / math.sqrt(2), abs=1e-12)


def test_mutual_information_known_answers():
    two = _two_level()
    # F = A = B, two equally likely levels: MI(F, A) = MI(F, B) = ln 2
    assert metrics.mutual_information(two, two, two) == pytest.approx(2 * math.log(2), abs=1e-12)
    # independent halves: rows split against columns split gives a uniform 2 x 2 joint
    assert metrics.mutual_information_pair(two, two.T) == pytest.approx(0.0, abs=1e-12)
    assert metrics.mutual_information_pair(np.full((4, 4), 3.0), _two_level((4, 4))) == 0.0


def test_correlations_known_answers():
    f = np.tile(np.arange(16.0), (16, 1)) + np.arange(16.0)[:, None] ** 2
    assert metrics.correlation_coefficient(f, 2 * f + 1, 0.5 * f + 10) == pytest.approx(1.0)
    assert metrics.correlation_coefficient(f, 2 * f + 1, 300 - f) == pytest.approx(0.0, abs=1e-12)
    a = np.tile(np.arange(16.0), (16, 1))
    b = np.arange(16.0)[:, None] ** 2 * np.ones((1, 16))
    # F = A + B: r(A, F - B) = r(B, F - A) = 1
    assert metrics.sum_of_correlation_differences(a + b, a, b) == pytest.approx(2.0)


def test_correlations_of_constant_images_are_undefined():
    f = np.tile(np.arange(8.0), (8, 1))
    flat = np.full((8, 8), 5.0)
    assert metrics.pearson(flat, f) is None
    assert metrics.correlation_coefficient(flat, f, f.T) is None
    assert metrics.correlation_coefficient(f, flat, f.T) is None
    assert metrics.sum_of_correlation_differences(f, f.T, f) is None  # F - B is constant


def test_mse_and_psnr_known_answers():
    f, a, b = np.full((4, 4), 10.0), np.full((4, 4), 12.0), np.full((4, 4), 6.0)
    assert metrics.mean_squared_error(f, a, b) == pytest.approx((4 + 16) / 2)
    assert metrics.peak_signal_to_noise_ratio(f, a, b) == pytest.approx(10.0)  # 10 log10(100 / 10)
    assert metrics.peak_signal_to_noise_ratio(f, f, f) is None


def test_ssim_known_answers():
    x = np.round(np.random.default_rng(0).uniform(0, 255, (20, 20)))
    assert metrics.ssim_pair(x, x) == pytest.approx(1.0, abs=1e-12)
    assert metrics.structural_similarity(x, x, x) == pytest.approx(2.0, abs=1e-12)
    # two constants: variances vanish, SSIM = (2 c1 c2 + C1) / (c1^2 + c2^2 + C1)
    c_1 = (0.01 * 255) ** 2
    expected = (2 * 40 * 200 + c_1) / (40 ** 2 + 200 ** 2 + c_1)
    flat_pair = np.full((9, 9), 40.0), np.full((9, 9), 200.0)
    assert metrics.ssim_pair(*flat_pair) == pytest.approx(expected)


def test_vif_known_answers(triple):
    f, a, _ = triple
    assert metrics.vif_pair(a, a) == pytest.approx(1.0, abs=1e-9)
    # a flat distorted image carries no information about the reference
    assert metrics.vif_pair(a, np.full_like(a, 80.0)) == 0.0
    # a flat reference: 0 / 0, reported as 1 by definition
    assert metrics.vif_pair(np.full_like(a, 255.0), f) == 1.0


def test_vif_undefined_below_its_minimum_size():
    rng = np.random.default_rng(1)
    small = np.round(rng.uniform(0, 255, (3, metrics.VIF_MIN_SIZE, metrics.VIF_MIN_SIZE)))
    assert metrics.visual_information_fidelity(*small) == pytest.approx(
        _vif_oracle(small[1], small[0]) + _vif_oracle(small[2], small[0]), rel=1e-9)
    too_small = small[:, 1:, 1:]
    assert metrics.visual_information_fidelity(*too_small) is None


def test_qabf_of_identical_strong_edges():
    """F = A = B with every non-zero edge strength >= 10: G = gF (>> 0.5, Qg = 0.9994) and
    orientations equal (Qa = 0.9879 / (1 + e^-4.4)) wherever the weight is non-zero."""
    rng = np.random.default_rng(3)
    image = 10.0 * rng.integers(0, 20, (12, 12))
    expected = 0.9994 * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert metrics.qabf(image, image, image) == pytest.approx(expected, rel=1e-12)
    black = np.zeros((6, 6))
    assert metrics.qabf(image[:6, :6], black, black) is None


# ---------------------------------------------------------------- invariances


def test_symmetric_in_the_sources(triple):
    f, a, b = triple
    for metric in (metrics.mutual_information, metrics.sum_of_correlation_differences,
                   metrics.visual_information_fidelity, metrics.qabf,
                   metrics.structural_similarity, metrics.correlation_coefficient,
                   metrics.mean_squared_error):
        assert metric(f, a, b) == pytest.approx(metric(f, b, a), rel=1e-12), metric.__name__
    assert metrics.mutual_information_pair(f, a) == pytest.approx(
        metrics.mutual_information_pair(a, f), rel=1e-12)


def test_grey_image_conversion():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[1, 0] = (0, 0, 255)
    rgb[1, 1] = (10, 20, 30)
    expected = np.round([[0.299 * 255, 0.587 * 255], [0.114 * 255, 2.99 + 11.74 + 3.42]])
    np.testing.assert_array_equal(metrics.grey_image(rgb), expected)
    grey = np.array([[3.4, 3.6], [200.5, 1.5]])  # rounding half to even, as NumPy does
    np.testing.assert_array_equal(metrics.grey_image(grey[..., None]), [[3, 4], [200, 2]])
    with pytest.raises(ValueError, match="shape"):
        metrics.grey_image(np.zeros((2, 2, 2)))


def test_all_metrics_on_a_triple(triple):
    f, a, b = triple
    values = metrics.all_metrics(f, a, b)
    assert tuple(values) == metrics.METRIC_NAMES
    assert values["EN"] == metrics.entropy(f) and values["VIF"] == (
        metrics.vif_pair(a, f) + metrics.vif_pair(b, f))
    assert {name: values[name] for name in metrics.COLOUR_METRICS} == metrics.colour_fidelity(
        f, a, b)
    assert all(isinstance(v, float) and math.isfinite(v) for v in values.values())
    flat = metrics.all_metrics(np.full_like(f, 90.0), a, b)
    assert flat["CC"] is None and flat["EN"] == 0.0 and flat["SD"] == 0.0
    assert all(v is None or math.isfinite(v) for v in flat.values())
    with pytest.raises(ValueError, match="differ in size"):
        metrics.all_metrics(f, a[:-1], b)


# ---------------------------------------------------------------- colour fidelity


def _colour_triple():
    """A [16, 16] grey texture; B black with a red patch (the functional region) and a dim red
    patch (ΔE00 about 5 from black, below the region's threshold); F is A's grey outside the red
    patch and B's red inside it."""
    rows, cols = np.mgrid[0:16, 0:16]
    a = np.round(100 + 60 * np.sin(rows / 2.0) * np.cos(cols / 3.0))
    b = np.zeros((16, 16, 3))
    b[4:10, 6:12] = (255, 0, 0)
    b[12:15, 1:4] = (20, 0, 0)
    region = np.zeros((16, 16), bool)
    region[4:10, 6:12] = True
    fused = np.where(region[..., None], b, a[..., None])
    return fused, a, b, region


def test_functional_region_is_where_b_differs_visibly_from_its_background():
    _, _, b, region = _colour_triple()
    np.testing.assert_array_equal(functional_region.of_rgb(b), region)
    # the background is B's colour at row 0, column 5, not black: a JET-like dark blue frame
    blue = np.where(region[..., None], b, np.array([0.0, 0.0, 128.0]))
    np.testing.assert_array_equal(functional_region.of_rgb(blue), region)
    assert not functional_region.of_rgb(np.full((8, 8, 3), 90.0)).any()
    # narrower than the background pixel's column: its row's last column is the background
    narrow = np.zeros((4, 3, 3))
    narrow[:, :2] = (255, 0, 0)
    np.testing.assert_array_equal(functional_region.of_rgb(narrow),
                                  np.repeat([[True, True, False]], 4, axis=0))


def test_colour_fidelity_known_answers():
    fused, a, b, region = _colour_triple()
    assert metrics.colour_fidelity(fused, a, b) == {"dE00-B": 0.0, "dE00-A": 0.0}
    # B itself: exact inside; outside, black and dim red against A's grey
    assert metrics.colour_fidelity(b, a, b)["dE00-B"] == 0.0
    # a grey F of level 255 (white) inside the region: the red-to-white difference there
    grey_inside = np.where(region[..., None], 255.0, fused)
    expected = colour_difference.ciede2000(colour_difference.srgb_to_lab(np.array([255.0, 0, 0])),
                                           [100.0, 0.0, 0.0])
    values = metrics.colour_fidelity(grey_inside, a, b)
    assert values["dE00-B"] == pytest.approx(float(expected), rel=1e-12)
    assert values["dE00-A"] == 0.0
    # half the outside pixels one grey level up: the mean of those pixels' L* differences / S_L
    lifted = fused.copy()
    lifted[::2][~region[::2]] += 1
    lab_a = colour_difference.srgb_to_lab(np.repeat(a[..., None], 3, axis=-1))
    lab_lifted = colour_difference.srgb_to_lab(lifted)
    l_mean = (lab_a[..., 0] + lab_lifted[..., 0]) / 2
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    per_pixel = np.abs(lab_lifted[..., 0] - lab_a[..., 0]) / s_l
    assert metrics.colour_fidelity(lifted, a, b)["dE00-A"] == pytest.approx(
        per_pixel[~region].mean(), rel=1e-9)
    # no functional region: dE00-B undefined
    assert metrics.colour_fidelity(a, a, np.zeros((16, 16, 3)))["dE00-B"] is None
    # all_metrics reports the same two, from the colour images (not their grey versions)
    fused[0, 0] = (0, 90, 0)
    values = metrics.all_metrics(fused, a, b)
    assert {name: values[name] for name in metrics.COLOUR_METRICS} == metrics.colour_fidelity(
        fused, a, b)
    assert values["dE00-A"] > 0 and values["dE00-B"] == 0.0


# ---------------------------------------------------------------- oracles


def _entropy_oracle(image):
    counts = collections.Counter(image.ravel().tolist())
    n = image.size
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _mi_oracle(x, y):
    n = x.size
    joint = collections.Counter(zip(x.ravel().tolist(), y.ravel().tolist()))
    px = collections.Counter(x.ravel().tolist())
    py = collections.Counter(y.ravel().tolist())
    return sum(c / n * math.log((c / n) / (px[u] / n * py[v] / n)) for (u, v), c in joint.items())


def _sf_ag_oracle(image):
    h, w = image.shape
    row = sum((image[i, j] - image[i, j - 1]) ** 2 for i in range(h) for j in range(1, w))
    col = sum((image[i, j] - image[i - 1, j]) ** 2 for i in range(1, h) for j in range(w))
    sf = math.sqrt(row / (h * (w - 1)) + col / ((h - 1) * w))

    def diff(line, k):
        if k == 0:
            return line[1] - line[0]
        if k == len(line) - 1:
            return line[-1] - line[-2]
        return (line[k + 1] - line[k - 1]) / 2

    ag = np.mean([[math.sqrt((diff(image[i, :], j) ** 2 + diff(image[:, j], i) ** 2) / 2)
                   for j in range(w)] for i in range(h)])
    return sf, ag


def _vif_oracle(ref, dist):
    """VIF written as the definition reads, with scipy.signal.convolve2d 'valid'."""
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        m = (n - 1) / 2
        y, x = np.ogrid[-m:m + 1, -m:m + 1]
        win = np.exp(-(x * x + y * y) / (2 * (n / 5) ** 2))
        win[win < np.finfo(float).eps * win.max()] = 0
        win = win / win.sum()
        conv = lambda z: signal.convolve2d(z, np.rot90(win, 2), mode="valid")  # noqa: E731
        if scale > 1:
            ref, dist = conv(ref)[::2, ::2], conv(dist)[::2, ::2]
        mu1, mu2 = conv(ref), conv(dist)
        s1, s2 = conv(ref * ref) - mu1 ** 2, conv(dist * dist) - mu2 ** 2
        s12 = conv(ref * dist) - mu1 * mu2
        s1[s1 < 0], s2[s2 < 0] = 0, 0
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        g[s1 < 1e-10] = 0
        sv[s1 < 1e-10] = s2[s1 < 1e-10]
        s1[s1 < 1e-10] = 0
        g[s2 < 1e-10] = 0
        sv[s2 < 1e-10] = 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= 1e-10] = 1e-10
        num += np.sum(np.log10(1 + g ** 2 * s1 / (sv + 2)))
        den += np.sum(np.log10(1 + s1 / 2))
    return 1.0 if np.isnan(num / den) else num / den


def _qabf_oracle(f, a, b):
    """Qabf written as the definition reads, with scipy.signal.convolve2d 'same'."""
    def edges(image):
        sx = signal.convolve2d(image, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], mode="same")
        sy = signal.convolve2d(image, [[1, 2, 1], [0, 0, 0], [-1, -2, -1]], mode="same")
        angle = np.full(image.shape, math.pi / 2)
        angle[sx != 0] = np.arctan(sy[sx != 0] / sx[sx != 0])
        return np.sqrt(sx ** 2 + sy ** 2), angle

    def preservation(gx, ax, gf, af):
        g = np.zeros_like(gx)
        g[gx > gf] = gf[gx > gf] / gx[gx > gf]
        g[gx == gf] = gf[gx == gf]
        g[gx < gf] = gx[gx < gf] / gf[gx < gf]
        ang = 1 - np.abs(ax - af) / (math.pi / 2)
        return 0.9994 / (1 + np.exp(-15 * (g - 0.5))) * 0.9879 / (1 + np.exp(-22 * (ang - 0.8)))

    (ga, aa), (gb, ab), (gf, af) = edges(a), edges(b), edges(f)
    kept = preservation(ga, aa, gf, af) * ga + preservation(gb, ab, gf, af) * gb
    return np.sum(kept) / np.sum(ga + gb)


def _ssim_oracle(x, y, data_range):
    """SSIM from its definition, one 7 x 7 window at a time over the valid interior."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i, j in itertools.product(range(x.shape[0] - 6), range(x.shape[1] - 6)):
        u, v = x[i:i + 7, j:j + 7].ravel(), y[i:i + 7, j:j + 7].ravel()
        cov = np.cov(u, v, ddof=1)
        values.append((2 * u.mean() * v.mean() + c1) * (2 * cov[0, 1] + c2)
                      / ((u.mean() ** 2 + v.mean() ** 2 + c1) * (cov[0, 0] + cov[1, 1] + c2)))
    return np.mean(values)


def test_single_image_metrics_match_oracles(triple):
    f = triple[0][:24, :30]
    sf, ag = _sf_ag_oracle(f)
    assert metrics.entropy(f) == pytest.approx(_entropy_oracle(f), rel=1e-12)
    assert metrics.spatial_frequency(f) == pytest.approx(sf, rel=1e-12)
    assert metrics.average_gradient(f) == pytest.approx(ag, rel=1e-12)
    assert metrics.standard_deviation(f) == pytest.approx(
        math.sqrt(sum((v - f.mean()) ** 2 for v in f.ravel()) / f.size), rel=1e-12)


def test_two_source_metrics_match_oracles(triple):
    f, a, b = triple
    assert metrics.mutual_information(f, a, b) == pytest.approx(
        _mi_oracle(f, a) + _mi_oracle(f, b), rel=1e-10)
    # values that are not 8-bit levels are categories too (MI ignores relabelling)
    assert metrics.mutual_information_pair(f / 3 - 7.5, a) == pytest.approx(_mi_oracle(f, a),
                                                                             rel=1e-10)
    r = lambda x, y: np.corrcoef(x.ravel(), y.ravel())[0, 1]  # noqa: E731
    assert metrics.correlation_coefficient(f, a, b) == pytest.approx((r(a, f) + r(b, f)) / 2,
                                                                     rel=1e-12)
    assert metrics.sum_of_correlation_differences(f, a, b) == pytest.approx(
        r(a, f - b) + r(b, f - a), rel=1e-12)
    assert metrics.visual_information_fidelity(f, a, b) == pytest.approx(
        _vif_oracle(a, f) + _vif_oracle(b, f), rel=1e-9)
    assert metrics.qabf(f, a, b) == pytest.approx(_qabf_oracle(f, a, b), rel=1e-12)


@pytest.mark.parametrize("data_range", [255.0, 2.0])
def test_ssim_matches_definition(triple, data_range):
    f, a, b = (x[10:40, 20:48] for x in triple)
    assert metrics.structural_similarity(f, a, b, data_range) == pytest.approx(
        _ssim_oracle(f, a, data_range) + _ssim_oracle(f, b, data_range), rel=1e-10)
