"""cpu_conv: the kernel gradient in strips equals XLA's convolution VJP, and is used on CPU only,
below MIN_DEPTH."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from difffccf_jax.model import cpu_conv


def _vjps(x, kernel, strides, padding, cotangent):
    def reference(x, kernel):
        return lax.conv_general_dilated(x, kernel, strides, padding,
                                        dimension_numbers=cpu_conv.NHWC)

    def custom(x, kernel):
        return cpu_conv.conv_general_dilated(x, kernel, strides, padding,
                                             dimension_numbers=cpu_conv.NHWC)

    y_ref, vjp_ref = jax.vjp(reference, x, kernel)
    y, vjp = jax.vjp(custom, x, kernel)
    return (y_ref, *vjp_ref(cotangent)), (y, *vjp(cotangent))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kernel_size, strides, padding", [
    (3, (1, 1), ((1, 1), (1, 1))),  # conv3x3
    (3, (2, 2), ((1, 1), (1, 1))),  # downsample
    (1, (1, 1), "SAME"),  # conv1x1
    (2, (1, 1), ((0, 1), (0, 1))),  # an upsampling phase
    (1, (1, 1), ((0, 0), (0, 1))),  # an upsampling phase
])
def test_gradients_equal_xla(batch, kernel_size, strides, padding, monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_conv, "kernel_gradient",
                        lambda *args, f=cpu_conv.kernel_gradient: calls.append(1) or f(*args))
    rng = np.random.default_rng(batch * 10 + kernel_size)
    x = jnp.asarray(rng.standard_normal((batch, 7, 9, 3)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, 3, 5)), jnp.float32)
    expected_shape = lax.conv_general_dilated(x, kernel, strides, padding,
                                              dimension_numbers=cpu_conv.NHWC).shape
    cotangent = jnp.asarray(rng.standard_normal(expected_shape), jnp.float32)
    reference, custom = _vjps(x, kernel, strides, padding, cotangent)
    chex.assert_shape(custom, [expected_shape, x.shape, kernel.shape])
    for want, got in zip(reference, custom):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert calls == ([1] if jax.default_backend() == "cpu" else [])


def test_batches_of_min_depth_keep_xla(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_conv, "conv", lambda *args: calls.append(args))
    kernel = jnp.ones((3, 3, 2, 4))
    y = cpu_conv.conv_general_dilated(jnp.ones((cpu_conv.MIN_DEPTH, 6, 6, 2)), kernel, (1, 1),
                                      "SAME", dimension_numbers=cpu_conv.NHWC)
    chex.assert_shape(y, (cpu_conv.MIN_DEPTH, 6, 6, 4))
    assert not calls
    cpu_conv.conv_general_dilated(jnp.ones((cpu_conv.MIN_DEPTH - 1, 6, 6, 2)), kernel, (1, 1),
                                  "SAME", dimension_numbers=cpu_conv.NHWC)
    assert len(calls) == (1 if jax.default_backend() == "cpu" else 0)


def test_strip_count_reaches_the_depth():
    assert [cpu_conv.strip_count(b, (1, 1)) for b in (1, 2, 3, 4, 12)] == [4, 2, 2, 1, 1]
    assert [cpu_conv.strip_count(b, (2, 2)) for b in (1, 2, 3, 4)] == [8, 4, 3, 1]
    for batch in range(1, cpu_conv.MIN_DEPTH):
        assert batch * cpu_conv.strip_count(batch, (1, 1)) >= cpu_conv.MIN_DEPTH
        assert batch * cpu_conv.strip_count(batch, (2, 2)) >= cpu_conv.MIN_STRIDED_DEPTH


@pytest.mark.parametrize("strips", [1, 2, 4, 5, 7])  # 6 output rows: uneven, and more strips
def test_kernel_gradient_matches_xla_at_odd_sizes_with_stride_2(strips):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 11, 6, 4)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((3, 6, 3, 2)), jnp.float32)
    padding = ((1, 1), (1, 1))

    def loss(kernel):
        y = lax.conv_general_dilated(x, kernel, (2, 2), padding, dimension_numbers=cpu_conv.NHWC)
        return jnp.sum(y * g)

    want = jax.grad(loss)(jnp.zeros((3, 3, 4, 2), jnp.float32))
    got = cpu_conv.kernel_gradient(x, g, (3, 3), (2, 2), padding, strips)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_path_is_per_backend():
    assert cpu_conv.kernel_gradient_path("cpu") == "strips"
    assert cpu_conv.kernel_gradient_path("gpu") == "xla"
    assert cpu_conv.kernel_gradient_path("cuda") == "xla"
    assert cpu_conv.kernel_gradient_path("tpu") == "xla"
    assert cpu_conv.kernel_gradient_path() == ("strips" if jax.default_backend() == "cpu"
                                               else "xla")


def test_unsupported_convolutions_fall_back_to_xla(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_conv, "conv", lambda *args: calls.append(args))
    x, kernel = jnp.ones((1, 5, 5, 4)), jnp.ones((3, 3, 2, 4))
    y = cpu_conv.conv_general_dilated(x, kernel, (1, 1), "SAME", feature_group_count=2,
                                      dimension_numbers=cpu_conv.NHWC)
    chex.assert_shape(y, (1, 5, 5, 4))
    y = cpu_conv.conv_general_dilated(x, kernel[:, :, :, :1].repeat(2, 2), (1, 1), "SAME",
                                      rhs_dilation=(2, 2), dimension_numbers=cpu_conv.NHWC)
    chex.assert_shape(y, (1, 5, 5, 1))
    assert not calls
    monkeypatch.setattr(cpu_conv, "kernel_gradient_path", lambda backend=None: "xla")
    cpu_conv.conv_general_dilated(x, kernel.repeat(2, 2), (1, 1), "SAME",
                                  dimension_numbers=cpu_conv.NHWC)
    assert not calls


def test_other_dtypes_keep_xla(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_conv, "conv", lambda *args: calls.append(args))
    x, kernel = jnp.ones((1, 5, 5, 2), jnp.bfloat16), jnp.ones((3, 3, 2, 4), jnp.bfloat16)
    y = cpu_conv.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=cpu_conv.NHWC)
    assert y.dtype == jnp.bfloat16 and not calls
