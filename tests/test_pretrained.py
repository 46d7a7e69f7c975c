"""The bundled PET/MRI model (pretrained/pet_tiny) and the README's example pairs (examples/)."""

import os

import jax
import numpy as np
import pytest

from difffccf_jax import cli
from difffccf_jax.data import images
from difffccf_jax.model import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "pretrained", "pet_tiny")
EXAMPLES = os.path.join(ROOT, "examples")
EXAMPLE_SIZES = {"1": (256, 256), "2": (217, 181)}  # rows x columns, as the README shows
MAX_BYTES = 5 * 2 ** 20  # the limit for a model kept in the repository


def test_bundled_model_is_small_and_loads_with_this_code():
    """Under 5 MB, every tensor of the shapes its own config describes (read_params checks
    them), and no path of the trainer's machine in its config."""
    size = sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(MODEL) for name in names)
    assert 0 < size <= MAX_BYTES
    config, params = checkpoints.load_for_inference(MODEL)
    assert config.data.root == "" and config.data.eval_root == ""
    assert config.data.tasks == ("pet",)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(params))


def test_examples_are_pairs_of_the_sizes_the_readme_states():
    for folder in ("MRI", "PET"):
        for stem, size in EXAMPLE_SIZES.items():
            image = images.read_image(os.path.join(EXAMPLES, "HARVARD-PET-MRI", folder,
                                                   stem + ".png"))
            assert image.shape[:2] == size, (folder, stem)


@pytest.mark.slow
def test_bundled_model_fuses_the_examples_at_their_own_size(tmp_path):
    """The README's command, with 3 sampling steps instead of the default: one RGB output per
    example of its own size, coloured (not grey) where B's uptake is high."""
    out = str(tmp_path / "fused")
    assert cli.main(["fuse", "--checkpoint", MODEL, "--task", "pet", "--data", EXAMPLES,
                     "--out", out, "--steps", "3"]) == 0
    for stem, size in EXAMPLE_SIZES.items():
        fused = images.read_image(os.path.join(out, stem + ".png"))
        b = images.read_image(os.path.join(EXAMPLES, "HARVARD-PET-MRI", "PET", stem + ".png"))
        assert fused.shape == size + (3,)
        hot = b[..., 0].astype(int) - b[..., 2] > 100  # red to yellow uptake
        assert hot.mean() > 0.05
        warm = fused[hot][:, 0].astype(int) - fused[hot][:, 2] > 20
        assert warm.mean() > 0.9
