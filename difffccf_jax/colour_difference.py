"""Perceived colour difference: sRGB -> CIELAB (D65) and the CIEDE2000 colour difference.

Written from the published formulas (IEC 61966-2-1 for sRGB, CIE 15 for CIELAB, CIE 142 /
Sharma, Wu and Dalal 2005 for CIEDE2000). Each function works in its input's own array namespace:
NumPy (and lists) in float64 for evaluation, JAX in the array's own precision inside the sampler,
which needs B's functional region (`functional_region`). The D65 white point is the sRGB matrix
applied to RGB white, so white is exactly L* = 100, a* = b* = 0 and every grey has a* = b* = 0.
"""

import numpy as np

# Linear sRGB -> XYZ (IEC 61966-2-1, D65), rows X, Y, Z.
SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805],
                        [0.2126, 0.7152, 0.0722],
                        [0.0193, 0.1192, 0.9505]])
WHITE_XYZ = SRGB_TO_XYZ.sum(axis=1)
LAB_EPSILON = (6.0 / 29.0) ** 3  # below it, CIELAB's cube root becomes a line
TWENTY_FIVE_TO_THE_SEVENTH = 25.0 ** 7


def _as_array(values):
    """(array, namespace): a JAX or NumPy array as it is, anything else as float64 NumPy."""
    if hasattr(values, "__array_namespace__") and not isinstance(values, np.ndarray):
        return values, values.__array_namespace__()
    return np.asarray(values, np.float64), np


def srgb_to_linear(rgb):
    """sRGB values on 0..255 -> linear-light values on 0..1 (the sRGB transfer function)."""
    rgb, xp = _as_array(rgb)
    v = rgb / 255.0
    return xp.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _lab_f(t, xp):
    """CIELAB's compressive function of a relative tristimulus value."""
    return xp.where(t > LAB_EPSILON, xp.cbrt(t), t / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)


def srgb_to_lab(rgb):
    """[..., 3] sRGB on 0..255 -> [..., 3] CIELAB (L*, a*, b*) under D65 (float64 for NumPy)."""
    linear = srgb_to_linear(rgb)
    xp = linear.__array_namespace__()
    xyz = linear @ xp.asarray(SRGB_TO_XYZ.T, dtype=linear.dtype)
    fx, fy, fz = (_lab_f(xyz[..., i] / WHITE_XYZ[i], xp) for i in range(3))
    return xp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def _hue_degrees(b, a, xp):
    """Hue angle atan2(b, a) in degrees on [0, 360); 0 for a neutral colour (a = b = 0)."""
    return xp.mod(xp.degrees(xp.arctan2(b, a)), 360.0)


def ciede2000(lab1, lab2, k_l=1.0, k_c=1.0, k_h=1.0):
    """CIEDE2000 colour difference Delta E00 [...] between CIELAB colours lab1, lab2 [..., 3].

    The formula as in Sharma, Wu and Dalal (2005), equations 1-22, with the parametric factors
    k_L = k_C = k_H = 1 by default. Where a colour is neutral (C' = 0) its hue is 0, the hue
    difference 0 and the mean hue the sum of the two hues, as the paper specifies."""
    (lab1, xp), (lab2, _) = _as_array(lab1), _as_array(lab2)
    l1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    l2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c_mean = (xp.hypot(a1, b1) + xp.hypot(a2, b2)) / 2
    c7 = c_mean ** 7
    g = 0.5 * (1 - xp.sqrt(c7 / (c7 + TWENTY_FIVE_TO_THE_SEVENTH)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = xp.hypot(a1p, b1), xp.hypot(a2p, b2)
    h1p, h2p = _hue_degrees(b1, a1p, xp), _hue_degrees(b2, a2p, xp)
    neutral = (c1p * c2p) == 0

    delta_l = l2 - l1
    delta_c = c2p - c1p
    dh = h2p - h1p
    dh = xp.where(dh > 180, dh - 360, xp.where(dh < -180, dh + 360, dh))
    dh = xp.where(neutral, 0.0, dh)
    delta_h = 2 * xp.sqrt(c1p * c2p) * xp.sin(xp.radians(dh) / 2)

    l_mean = (l1 + l2) / 2
    cp_mean = (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_mean = xp.where(xp.abs(h1p - h2p) <= 180, h_sum / 2,
                      xp.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2))
    h_mean = xp.where(neutral, h_sum, h_mean)
    t = (1 - 0.17 * xp.cos(xp.radians(h_mean - 30)) + 0.24 * xp.cos(xp.radians(2 * h_mean))
         + 0.32 * xp.cos(xp.radians(3 * h_mean + 6)) - 0.20 * xp.cos(xp.radians(4 * h_mean - 63)))
    delta_theta = 30 * xp.exp(-(((h_mean - 275) / 25) ** 2))
    cp7 = cp_mean ** 7
    r_c = 2 * xp.sqrt(cp7 / (cp7 + TWENTY_FIVE_TO_THE_SEVENTH))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / xp.sqrt(20 + (l_mean - 50) ** 2)
    s_c = 1 + 0.045 * cp_mean
    s_h = 1 + 0.015 * cp_mean * t
    r_t = -xp.sin(xp.radians(2 * delta_theta)) * r_c

    term_l = delta_l / (k_l * s_l)
    term_c = delta_c / (k_c * s_c)
    term_h = delta_h / (k_h * s_h)
    return xp.sqrt(term_l ** 2 + term_c ** 2 + term_h ** 2 + r_t * term_c * term_h)
