"""sRGB -> CIELAB and CIEDE2000: the published test data and closed forms."""

import math

import numpy as np
import pytest

from difffccf_jax import colour_difference

# Sharma, Wu and Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes,
# supplementary test data, and mathematical observations", Table 1: (L*, a*, b*) of colour 1,
# of colour 2, and their Delta E00 (k_L = k_C = k_H = 1), rounded to 4 decimals.
SHARMA_PAIRS = [
    ((50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    ((50.0000, 3.1571, -77.2803), (50.0000, 0.0000, -82.7485), 2.8615),
    ((50.0000, 2.8361, -74.0200), (50.0000, 0.0000, -82.7485), 3.4412),
    ((50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -1.1848, -84.8006), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, -0.9009, -85.5211), (50.0000, 0.0000, -82.7485), 1.0000),
    ((50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    ((50.0000, -1.0000, 2.0000), (50.0000, 0.0000, 0.0000), 2.3669),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0010), 7.1792),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    ((50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0012), 7.2195),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0010, -2.4900), 4.8045),
    ((50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    ((50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    ((50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    ((50.0000, 2.5000, 0.0000), (61.0000, -5.0000, 29.0000), 22.8977),
    ((50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    ((50.0000, 2.5000, 0.0000), (58.0000, 24.0000, 15.0000), 19.4535),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.1736, 0.5854), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2972, 0.0000), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 1.8634, 0.5757), 1.0000),
    ((50.0000, 2.5000, 0.0000), (50.0000, 3.2592, 0.3350), 1.0000),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((63.0109, -31.0961, -5.8663), (62.8187, -29.7946, -4.0864), 1.2630),
    ((61.2901, 3.7196, -5.3901), (61.4292, 2.2480, -4.9620), 1.8731),
    ((35.0831, -44.1164, 3.7933), (35.0232, -40.0716, 1.5901), 1.8645),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((36.4612, 47.8580, 18.3852), (36.2715, 50.5065, 21.2231), 1.4146),
    ((90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    ((90.9257, -0.5406, -0.9208), (88.6381, -0.8985, -0.7239), 1.5381),
    ((6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


def test_ciede2000_matches_the_published_test_data():
    lab1, lab2, expected = (np.array([pair[i] for pair in SHARMA_PAIRS]) for i in range(3))
    # the published values are rounded to 4 decimals; the formula is symmetric in its colours
    np.testing.assert_allclose(colour_difference.ciede2000(lab1, lab2), expected, rtol=0,
                               atol=1e-4)
    np.testing.assert_allclose(colour_difference.ciede2000(lab2, lab1), expected, rtol=0,
                               atol=1e-4)


def test_ciede2000_of_identical_colours_is_zero():
    lab = np.array([[50.0, 2.5, 0.0], [0.0, 0.0, 0.0], [90.0, -60.0, 75.0]])
    np.testing.assert_array_equal(colour_difference.ciede2000(lab, lab), 0.0)


@pytest.mark.parametrize("a, b", [(20.0, 30.0), (20.0, -30.0), (-5.0, 60.0), (45.0, 3.0)])
def test_ciede2000_of_a_hue_reflection_is_its_closed_form(a, b):
    """(L, a, b) against (L, -a, b): the same L and chroma, hues h and 180 - h around a mean hue
    of 90 (270 for b < 0). Only the hue term remains: Delta E00 = |2 C' sin(dh / 2)| / S_H,
    computed here in float64 from the formula's definitions on the one colour."""
    chroma = math.hypot(a, b)
    g = 0.5 * (1 - math.sqrt(chroma ** 7 / (chroma ** 7 + 25.0 ** 7)))
    a_prime = a * (1 + g)
    chroma_prime = math.hypot(a_prime, b)
    hue = math.degrees(math.atan2(b, a_prime)) % 360
    hue_difference = (180 - hue) % 360 - hue if b > 0 else (540 - hue) % 360 - hue
    mean_hue = 90.0 if b > 0 else 270.0
    t = (1 - 0.17 * math.cos(math.radians(mean_hue - 30)) + 0.24 * math.cos(math.radians(
        2 * mean_hue)) + 0.32 * math.cos(math.radians(3 * mean_hue + 6))
         - 0.20 * math.cos(math.radians(4 * mean_hue - 63)))
    expected = abs(2 * chroma_prime * math.sin(math.radians(hue_difference) / 2)) / (
        1 + 0.015 * chroma_prime * t)
    value = colour_difference.ciede2000([50.0, a, b], [50.0, -a, b])
    assert value == pytest.approx(expected, rel=1e-12)
    assert value > 1.0


def test_srgb_to_lab_known_colours():
    lab = colour_difference.srgb_to_lab(np.array([[255.0, 255, 255], [0, 0, 0], [255, 0, 0]]))
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=1e-12)
    # sRGB red: (53.24, 80.09, 67.20) with the usual D65 white (0.95047, 1, 1.08883); this
    # module's white is the sRGB matrix's own (0.9505, 1, 1.089), 0.03 away at most
    np.testing.assert_allclose(lab[2], [53.2408, 80.0925, 67.2032], atol=0.03)


@pytest.mark.parametrize("level", [0.0, 5.0, 10.0, 11.0, 128.0, 200.0, 255.0])
def test_srgb_to_lab_of_a_grey_is_its_lightness(level):
    """A grey level v has a* = b* = 0 and L* = 116 f(Y) - 16 with Y the sRGB-decoded v, the
    piecewise f of CIELAB (a cube root above (6/29)^3, a line below)."""
    v = level / 255
    y = v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4
    f = y ** (1 / 3) if y > (6 / 29) ** 3 else y / (3 * (6 / 29) ** 2) + 4 / 29
    lab = colour_difference.srgb_to_lab(np.full(3, level))
    np.testing.assert_allclose(lab, [116 * f - 16, 0.0, 0.0], rtol=0, atol=1e-9)


def test_jax_arrays_give_the_float64_values_in_their_own_precision():
    """The sampler computes B's functional region in JAX (float32): sRGB -> CIELAB -> CIEDE2000
    of random colour pairs agree with the float64 NumPy values to float32 round-off."""
    import jax.numpy as jnp

    rgb1, rgb2 = np.random.default_rng(0).integers(0, 256, (2, 1000, 3)).astype(np.float64)
    lab1, lab2 = colour_difference.srgb_to_lab(rgb1), colour_difference.srgb_to_lab(rgb2)
    jax_lab1, jax_lab2 = (colour_difference.srgb_to_lab(jnp.asarray(x, jnp.float32))
                          for x in (rgb1, rgb2))
    assert jax_lab1.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(jax_lab1), lab1, rtol=0, atol=2e-3)
    expected = colour_difference.ciede2000(lab1, lab2)
    np.testing.assert_allclose(np.asarray(colour_difference.ciede2000(jax_lab1, jax_lab2)),
                               expected, rtol=0, atol=2e-3)
