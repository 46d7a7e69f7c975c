"""Test set-up: 4 simulated CPU devices, XLA's backend optimisation off (processes
.TEST_XLA_FLAGS) and a persistent compilation cache in .jax_cache/.

All three must be configured before JAX is imported anywhere, hence at the top of conftest. The
cache is shared by pytest-xdist's workers (`-n 2`) and by the processes tests start.
"""

import os

from processes import xla_flags

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(4)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.path.join(REPO_ROOT, ".jax_cache")
# Shared by the workers and the processes that tests start, without a lock: a read that meets
# an entry still being written fails, and JAX warns and compiles the program again.
CACHE_SETTINGS = {
    "jax_compilation_cache_dir": CACHE_DIR,
    "jax_persistent_cache_min_compile_time_secs": 0.5,
}
for name, value in CACHE_SETTINGS.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)  # for the processes that tests start


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_config_path(repo_root):
    return os.path.join(repo_root, "configs", "tiny.py")


@pytest.fixture(scope="session")
def paper_config_path(repo_root):
    return os.path.join(repo_root, "configs", "paper.py")


def pytest_configure(config):
    """Keeps the module order below under `--dist loadfile`: pytest-xdist otherwise reorders
    the files by their number of tests, which sends the long single-test files last."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


# A rough cost per test in cold-cache seconds on 2 cores: a slow test that starts processes
# compiles its programs in each of them.
SLOW_COST, SLOW_PROCESSES_COST = 30, 100


def cold_cost(item):
    """The rough cold-cache cost of one test (SLOW_COST, SLOW_PROCESSES_COST, else 1)."""
    if item.get_closest_marker("slow") is None:
        return 1
    return SLOW_COST if item.get_closest_marker("multiprocess") is None else SLOW_PROCESSES_COST


@pytest.hookimpl(trylast=True)  # after -m and -k deselect: the cost of what runs
def pytest_collection_modifyitems(items):
    """Modules with the largest summed cost run first, each kept whole: under `-n 2 --dist
    loadfile` the longest files start first and the two workers finish together."""
    costs = {}
    for item in items:
        costs[item.module] = costs.get(item.module, 0) + cold_cost(item)
    items.sort(key=lambda item: -costs[item.module])
