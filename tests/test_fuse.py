"""`difffccf fuse` on generated PET pairs with a freshly initialised tiny model."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from difffccf_jax import cli, color
from difffccf_jax.model import checkpoints, unet
from difffccf_jax.config_cli import load_config
from difffccf_jax.data import generator, images, layouts
from difffccf_jax.errors import UserError
from difffccf_jax.inference import fusion

NUM_PAIRS = 5  # batches of 4 on 4 devices: the second batch is padded
# As in test_sampling: a two-level, one-block U-Net, so both share one compiled sampler.
TEST_OVERRIDES = (("model.channel_mult", "(1, 2)"), ("model.num_res_blocks", "1"))


@pytest.fixture(scope="module")
def config(tiny_config_path):
    return load_config(tiny_config_path, TEST_OVERRIDES)


@pytest.fixture(scope="module")
def checkpoint(config, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fuse") / "checkpoint")
    model = unet.model_from_config(config.model)
    params = unet.init_params(model, jax.random.PRNGKey(0), config.data.image_size)
    checkpoints.write_params_checkpoint(path, config, params)
    return path


@pytest.fixture(scope="module")
def data_root(config, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fuse") / "data")
    layout = layouts.layout_from_config(config.data, "pet")
    generator.write_task(root, layout, NUM_PAIRS, config.data.image_size, seed=3)
    return root


def pet_folders(root):
    folder = os.path.join(root, "HARVARD-PET-MRI")
    return os.path.join(folder, "MRI"), os.path.join(folder, "PET")


@pytest.fixture(scope="module")
def fused(checkpoint, data_root, tmp_path_factory):
    """Output folder of one run with extras (the folder does not exist before)."""
    out = str(tmp_path_factory.mktemp("fuse") / "out" / "nested")
    status = cli.main(["fuse", "--checkpoint", checkpoint, "--task", "pet", "--data", data_root,
                       "--out", out, "--batch-size", "4", "--save-extras"])
    assert status == 0
    return out


def fuse_status(capsys, *arguments):
    """(exit status, stderr) of `difffccf fuse ARGUMENTS`."""
    capsys.readouterr()
    status = cli.main(["fuse", *arguments])
    return status, capsys.readouterr().err


def test_writes_one_rgb_png_per_pair_named_as_its_inputs(fused):
    names = [f"{i}.png" for i in range(1, NUM_PAIRS + 1)]
    assert sorted(os.listdir(fused)) == sorted(names + [fusion.EXTRAS_FOLDER])
    assert sorted(os.listdir(os.path.join(fused, fusion.EXTRAS_FOLDER))) == sorted(
        name[:-4] for name in names)
    for name in names:
        image = images.read_image(os.path.join(fused, name))
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8


def test_library_call_returns_exactly_what_it_wrote(checkpoint, data_root, tmp_path):
    out = str(tmp_path / "library")
    result = fusion.fuse_folder(checkpoint, out, data=data_root, steps=3, save_extras=True,
                                show_progress=False)
    written = {os.path.relpath(os.path.join(folder, name), out)
               for folder, _, names in os.walk(out) for name in names}
    listed = {os.path.relpath(path, out) for paths in result.outputs for path in paths.values()}
    assert written == listed and len(listed) == NUM_PAIRS * 12
    assert result.names == tuple(f"{i}.png" for i in range(1, NUM_PAIRS + 1))
    assert (result.task, result.steps, result.registered, result.stochastic) == (
        "pet", 3, False, False)
    assert result.summary() == f"fused {NUM_PAIRS} pet pairs into {out} (3 steps)"


def test_extras_are_the_fused_channels_masks_field_and_warped_b(fused, data_root, config):
    _, b_folder = pet_folders(data_root)
    for stem in ("1", "5"):  # a pair of the full batch and the padded one
        extras = os.path.join(fused, fusion.EXTRAS_FOLDER, stem)
        channels = np.stack([images.read_image(os.path.join(extras, f"fused_{c}.png"))
                             for c in ("y", "cr", "cb")], axis=-1)
        rgb = images.read_image(os.path.join(fused, f"{stem}.png"))
        np.testing.assert_array_equal(rgb, color.ycrcb_to_rgb_uint8(channels))
        for name in ("region_cr", "region_cb"):
            region = images.read_image(os.path.join(extras, f"{name}.png"))
            assert set(np.unique(region)) <= {0, 255} and region.shape == (32, 32)
        for name in ("mask_m1_y", "mask_m2_cr", "mask_m2_cb"):
            assert images.read_image(os.path.join(extras, f"{name}.png")).shape == (32, 32)
        # the fresh model's deformation head starts at the identity: B is fused as it is
        field = np.load(os.path.join(extras, "deformation.npy"))
        assert field.shape == (32, 32, 2) and field.dtype == np.float32
        np.testing.assert_array_equal(field, 0.0)
        warped = images.read_image(os.path.join(extras, "warped_b.png")).astype(int)
        b_rgb = images.read_image(os.path.join(b_folder, f"{stem}.png")).astype(int)
        assert np.abs(warped - b_rgb).max() <= 2  # through YCrCb levels and back
        grid = images.read_image(os.path.join(extras, "deformation_grid.png"))
        assert grid.shape[0] >= fusion.GRID_PICTURE_SIZE and grid.ndim == 3


def test_grid_picture_moves_lines_by_the_field():
    field = np.zeros((8, 8, 2), np.float32)
    field[..., 0] = 2.0  # every grid point moved two pixels along x
    picture = fusion.deformation_grid_image(field, spacing=4, size=64)
    dark = picture[..., 0] < 100
    # columns 0 and 4 (at 8 px per pixel, centred) move from x = 4 and 36 to x = 20 and 52
    assert dark[:, 20].mean() > 0.8 and dark[:, 52].mean() > 0.8
    assert dark[:, 4].mean() < 0.2 and dark[:, 36].mean() < 0.2


def test_existing_outputs_are_kept_unless_overwrite(fused, checkpoint, data_root, capsys):
    before = {name: os.path.getmtime(os.path.join(fused, name)) for name in os.listdir(fused)}
    contents = {name: images.read_image(os.path.join(fused, name))
                for name in before if name.endswith(".png")}
    status, err = fuse_status(capsys, "--checkpoint", checkpoint, "--data", data_root,
                              "--out", fused, "--batch-size", "4")
    assert status == 2 and "1.png already exists" in err and "--overwrite" in err
    assert {n: os.path.getmtime(os.path.join(fused, n)) for n in os.listdir(fused)} == before
    # the two explicit folders with --overwrite: the same pairs give the same images again
    a_folder, b_folder = pet_folders(data_root)
    status, _ = fuse_status(capsys, "--checkpoint", checkpoint, "--a-dir", a_folder,
                            "--b-dir", b_folder, "--out", fused, "--batch-size", "4",
                            "--overwrite")
    assert status == 0
    assert sorted(os.listdir(fused)) == sorted(before)
    for name, image in contents.items():
        np.testing.assert_array_equal(images.read_image(os.path.join(fused, name)), image)


def test_missing_checkpoint(tmp_path, data_root, capsys):
    out = tmp_path / "out"
    status, err = fuse_status(capsys, "--checkpoint", str(tmp_path / "nothing"), "--data",
                              data_root, "--out", str(out))
    assert status == 2 and "nothing does not exist" in err
    assert not out.exists()


def test_incompatible_checkpoint_names_the_tensor(tmp_path, checkpoint, data_root, capsys):
    wrong = tmp_path / "wrong"
    shutil.copytree(checkpoint, wrong)
    saved = json.loads((wrong / "config.json").read_text())
    saved["model"]["graph_ffn_width"] = 48  # the graph layer's FFN: 32 -> 48 hidden units
    (wrong / "config.json").write_text(json.dumps(saved))
    out = tmp_path / "out"
    status, err = fuse_status(capsys, "--checkpoint", str(wrong), "--data", data_root,
                              "--out", str(out))
    assert status == 2 and "graformer/ffn/hidden" in err and "shape" in err
    assert not out.exists()


def test_mismatched_folders(tmp_path, checkpoint, data_root, capsys):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    _, b_folder = pet_folders(str(root))
    os.remove(os.path.join(b_folder, "3.png"))
    out = tmp_path / "out"
    status, err = fuse_status(capsys, "--checkpoint", checkpoint, "--data", str(root),
                              "--out", str(out))
    assert status == 2 and "do not match" in err and "3.png" in err
    assert not out.exists()


def test_unreadable_image(tmp_path, checkpoint, data_root, capsys):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    a_folder, b_folder = pet_folders(str(root))
    with open(os.path.join(a_folder, "2.png"), "wb") as file:
        file.write(b"not a png")
    out = tmp_path / "out"
    status, err = fuse_status(capsys, "--checkpoint", checkpoint, "--a-dir", a_folder,
                              "--b-dir", b_folder, "--out", str(out))
    assert status == 2 and os.path.join(a_folder, "2.png") in err
    assert not out.exists()


@pytest.mark.parametrize("arguments, message", [
    (("--a-dir", "x"), "either --data DIR, or both --a-dir DIR and --b-dir DIR"),
    (("--steps", "51"), "--steps 51: expected 1..50"),
    (("--batch-size", "0"), "--batch-size 0: expected a positive number"),
])
def test_bad_arguments(tmp_path, checkpoint, data_root, capsys, arguments, message):
    out = tmp_path / "out"
    status, err = fuse_status(capsys, "--checkpoint", checkpoint, "--data", data_root,
                              "--out", str(out), *arguments)
    assert status == 2 and message in err
    assert not out.exists()


def test_inputs_sharing_a_stem_are_refused(tmp_path):
    names = ("1.png", "1.jpg")
    planned = [fusion.output_paths(str(tmp_path), name, save_extras=False) for name in names]
    with pytest.raises(UserError, match=r"1\.png and 1\.jpg would both be written to .*1\.png"):
        fusion.check_distinct(names, planned)


def test_command_line_choices_override_the_checkpoint_settings(config):
    settings = fusion.sampling_settings(config.copy_and_resolve_references(), steps=7,
                                        batch_size=3, seed=11, stochastic=True, register=True,
                                        output="trajectory")
    assert (settings.steps, settings.batch_size, settings.seed) == (7, 3, 11)
    assert settings.add_noise is True and settings.register is True
    assert settings.output == "trajectory"
    settings = fusion.sampling_settings(config.copy_and_resolve_references())
    assert (settings.steps, settings.add_noise, settings.register) == (12, False, False)
    assert settings.output == "clean"


def test_data_may_name_the_task_folder_itself(config, data_root):
    a_folder, _ = pet_folders(data_root)
    for data in (data_root, os.path.dirname(a_folder)):
        root, layout = fusion.input_layout(config, "pet", data=data)
        pairs = layouts.list_pairs(root, layout)
        assert [pair.name for pair in pairs] == [f"{i}.png" for i in range(1, NUM_PAIRS + 1)]
        assert os.path.samefile(pairs[0].a, os.path.join(a_folder, "1.png"))
