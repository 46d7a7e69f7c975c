"""Test set-up: 4 simulated CPU devices and a persistent compilation cache in .jax_cache/.

Both must be configured before JAX is imported anywhere, hence at the top of conftest.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

jax.config.update("jax_compilation_cache_dir", os.path.join(REPO_ROOT, ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_config_path(repo_root):
    return os.path.join(repo_root, "configs", "tiny.py")


@pytest.fixture(scope="session")
def paper_config_path(repo_root):
    return os.path.join(repo_root, "configs", "paper.py")
