"""compilation: the project's programs are compiled without YNNPACK on CPU, with nothing extra
elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np

from difffccf_jax import compilation


def test_options_per_backend():
    assert compilation.cpu_options_known()
    assert compilation.options("cpu") == compilation.CPU_OPTIONS
    assert compilation.options("gpu") == compilation.options("tpu") == {}
    assert compilation.options() == (compilation.CPU_OPTIONS if jax.default_backend() == "cpu"
                                     else {})


def test_jit_compiles_the_dot_with_xlas_own_kernels():
    a = jnp.asarray(np.random.default_rng(0).standard_normal((64, 32)), jnp.float32)
    ynn_dots = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
    with_ynn = jax.jit(jnp.matmul, compiler_options=ynn_dots).lower(a, a.T).compile()
    assert "__ynn_fusion" in with_ynn.as_text()  # the option decides what the program calls
    compiled = compilation.jit(jnp.matmul).lower(a, a.T).compile()
    assert "__ynn_fusion" not in compiled.as_text()
    np.testing.assert_allclose(compiled(a, a.T), np.asarray(a) @ np.asarray(a).T, rtol=1e-5,
                               atol=1e-5)


def test_jit_as_a_decorator_keeps_jax_jit_arguments():
    @compilation.jit(static_argnums=1)
    def power(x, n):
        return x ** n

    assert float(power(jnp.float32(3.0), 2)) == 9.0
    assert "__ynn_fusion" not in power.lower(jnp.float32(3.0), 2).compile().as_text()
