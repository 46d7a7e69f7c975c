"""`difffccf fuse` on generated PET pairs with a freshly initialised tiny model."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

import difffccf_jax
from difffccf_jax import cli, color
from difffccf_jax.commands import fuse as fuse_command
from difffccf_jax.model import checkpoints, regions, unet
from difffccf_jax.config_cli import load_config
from difffccf_jax.data import generator, images, layouts
from difffccf_jax.errors import UserError
from difffccf_jax.inference import fuser as fuser_module
from difffccf_jax.inference import fusion, shards, sizes, tiling
from processes import run_two_processes

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


def modification_times(folder):
    """{relative path: mtime in ns} of every visible file under `folder`."""
    return {os.path.relpath(os.path.join(root, name), folder):
            os.stat(os.path.join(root, name)).st_mtime_ns
            for root, _, names in os.walk(folder) for name in names if not name.startswith(".")}


def test_a_rerun_fuses_only_incomplete_pairs_unless_overwrite(fused, checkpoint, data_root,
                                                              tmp_path, capsys):
    out = str(tmp_path / "copy")
    shutil.copytree(fused, out)
    before = modification_times(out)
    contents = {name: images.read_image(os.path.join(out, name))
                for name in before if name.endswith(".png")}
    capsys.readouterr()
    assert cli.main(["fuse", "--checkpoint", checkpoint, "--data", data_root, "--out", out,
                     "--batch-size", "4", "--save-extras"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"fused 0 pet pairs into {out} (12 steps), 5 done before")
    assert modification_times(out) == before
    # pair 2 without one of its extras is incomplete: only pair 2 is fused again, as before;
    # the temporary files a killed run left for the pairs are removed
    os.remove(os.path.join(out, fusion.EXTRAS_FOLDER, "2", "mask_m1_y.png"))
    stale = [os.path.join(out, ".1.png.tmp-99999"),
             os.path.join(out, fusion.EXTRAS_FOLDER, "2", ".mask_m1_y.png.tmp-12")]
    for path in stale:
        with open(path, "wb") as file:
            file.write(b"half a png")
    assert cli.main(["fuse", "--checkpoint", checkpoint, "--data", data_root, "--out", out,
                     "--batch-size", "4", "--save-extras"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("(12 steps), 4 done before")
    after = modification_times(out)
    assert sorted(after) == sorted(before) and not any(map(os.path.exists, stale))
    assert {name for name in after if after[name] != before[name]} == {
        name for name in before if name == "2.png" or name.startswith(
            os.path.join(fusion.EXTRAS_FOLDER, "2", ""))}
    # the two explicit folders with --overwrite: every pair again, the same images
    a_folder, b_folder = pet_folders(data_root)
    status, _ = fuse_status(capsys, "--checkpoint", checkpoint, "--a-dir", a_folder,
                            "--b-dir", b_folder, "--out", out, "--batch-size", "4",
                            "--save-extras", "--overwrite")
    assert status == 0
    assert all(after[name] != mtime for name, mtime in modification_times(out).items())
    for name, image in contents.items():
        np.testing.assert_array_equal(images.read_image(os.path.join(out, name)), image)


def test_missing_checkpoint(tmp_path, data_root, capsys):
    out = tmp_path / "out"
    status, err = fuse_status(capsys, "--checkpoint", str(tmp_path / "nothing"), "--data",
                              data_root, "--out", str(out))
    assert status == 2 and os.path.join("nothing", "config.json") + " does not exist" in err
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


def truncate(path):
    """Cuts the file at `path` to half its bytes."""
    with open(path, "rb") as file:
        content = file.read()
    with open(path, "wb") as file:
        file.write(content[:len(content) // 2])


def test_bad_pairs_are_skipped_and_listed_and_the_others_fused(tmp_path, checkpoint, data_root,
                                                               fused, capsys):
    """Among the five generated pairs: 2's A truncated, 3's B missing, 4's B of another aspect
    ratio; 1 and 5 are fused as in the full run, the three listed, the exit status 1."""
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    a_folder, b_folder = pet_folders(str(root))
    truncate(os.path.join(a_folder, "2.png"))
    os.remove(os.path.join(b_folder, "3.png"))
    Image.fromarray(synthetic_pair(32, 48, seed=1)[1]).save(os.path.join(b_folder, "4.png"))
    out = str(tmp_path / "out")
    capsys.readouterr()
    status = cli.main(["fuse", "--checkpoint", checkpoint, "--data", str(root), "--out", out,
                       "--batch-size", "4", "--save-extras"])
    failures_file = os.path.join(out, "failures.jsonl")
    assert status == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"fused 2 pet pairs into {out} (12 steps), skipped 3: see {failures_file}")
    with open(failures_file, encoding="utf-8") as file:
        reasons = {entry["name"]: entry["reason"] for entry in map(json.loads, file)}
    assert sorted(reasons) == ["2.png", "3.png", "4.png"]
    assert reasons["2.png"].startswith(os.path.join(a_folder, "2.png") + ": unreadable or "
                                                                         "truncated image")
    assert reasons["3.png"] == f"no B image: {os.path.join(b_folder, '3.png')} not found"
    assert reasons["4.png"] == (f"{os.path.join(b_folder, '4.png')}: A is 32x32 but B is 48x32: "
                                "another aspect ratio, so B is not the same view as A")
    with pytest.raises(UserError, match=r"skipped 3: .*; the first, 3.png: no B image"):
        fusion.fuse_folder(checkpoint, out, data=str(root), batch_size=4, save_extras=True,
                           show_progress=False).check()
    assert sorted(os.listdir(out)) == ["1.png", "5.png", fusion.EXTRAS_FOLDER, "failures.jsonl"]
    for name in ("1.png", "5.png"):
        np.testing.assert_array_equal(images.read_image(os.path.join(out, name)),
                                      images.read_image(os.path.join(fused, name)))
    # repaired, the rerun fuses the three and removes the list
    shutil.copy(os.path.join(pet_folders(data_root)[0], "2.png"), a_folder)
    for name in ("3.png", "4.png"):
        shutil.copy(os.path.join(pet_folders(data_root)[1], name), b_folder)
    assert cli.main(["fuse", "--checkpoint", checkpoint, "--data", str(root), "--out", out,
                     "--batch-size", "4", "--save-extras"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("(12 steps), 2 done before")
    assert not os.path.exists(failures_file)
    for name in ("2.png", "3.png", "4.png"):
        np.testing.assert_array_equal(images.read_image(os.path.join(out, name)),
                                      images.read_image(os.path.join(fused, name)))


@pytest.mark.parametrize("arguments, message", [
    (("--a-dir", "x"), "either --data DIR, or both --a-dir DIR and --b-dir DIR"),
    (("--steps", "51"), "--steps 51: expected 1..50"),
    (("--batch-size", "0"), "--batch-size 0: expected a positive number"),
    (("--resize", "0"), "--resize 0: expected a positive number of pixels"),
    (("--tile", "15"), "--tile 15: expected a positive multiple of 2"),
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
    settings = fuser_module.sampling_settings(config.copy_and_resolve_references(), steps=7,
                                        batch_size=3, seed=11, stochastic=True, register=True,
                                        output="trajectory", chroma="fused", detail_of_b=False)
    assert (settings.steps, settings.batch_size, settings.seed) == (7, 3, 11)
    assert settings.add_noise is True and settings.register is True
    assert (settings.output, settings.chroma, settings.detail_of_b) == ("trajectory", "fused",
                                                                        False)
    settings = fuser_module.sampling_settings(config.copy_and_resolve_references())
    assert (settings.steps, settings.add_noise, settings.register) == (12, False, False)
    assert (settings.output, settings.chroma, settings.detail_of_b) == ("clean", "source", True)


@pytest.mark.parametrize("flag, value", [([], None), (["--detail-of-b"], True),
                                         (["--no-detail-of-b"], False)])
def test_the_fuse_command_passes_its_detail_of_b_choice(flag, value):
    args = cli.build_parser().parse_args(["fuse", "--checkpoint", "c", "--out", "o", *flag])
    assert "detail_of_b" in fuse_command.FUSE_ARGUMENTS and args.detail_of_b is value


def test_chroma_choice_keeps_bs_colours_or_fuses_them(fused, checkpoint, data_root, tmp_path):
    """By default the fused Cr and Cb are B's own levels; `--chroma fused` outputs the chroma
    runs' result (the published path), which differs inside B's region."""
    _, b_folder = pet_folders(data_root)
    out = str(tmp_path / "fused_chroma")
    assert cli.main(["fuse", "--checkpoint", checkpoint, "--task", "pet", "--data", data_root,
                     "--out", out, "--batch-size", "4", "--save-extras", "--chroma",
                     "fused"]) == 0
    for stem in ("1", "5"):
        b_chroma = color.to_uint8(color.rgb_to_ycrcb(
            images.read_image(os.path.join(b_folder, f"{stem}.png")).astype(np.float64)))[..., 1:]
        chroma = {folder: np.stack([images.read_image(os.path.join(
            folder, fusion.EXTRAS_FOLDER, stem, f"fused_{c}.png")) for c in ("cr", "cb")], -1)
            for folder in (fused, out)}
        np.testing.assert_array_equal(chroma[fused], b_chroma)
        assert np.abs(chroma[out].astype(int) - b_chroma).max() > 10


def test_data_may_name_the_task_folder_itself(config, data_root):
    a_folder, _ = pet_folders(data_root)
    for data in (data_root, os.path.dirname(a_folder)):
        root, layout = fusion.input_layout(config, "pet", data=data)
        pairs = layouts.list_pairs(root, layout)
        assert [pair.name for pair in pairs] == [f"{i}.png" for i in range(1, NUM_PAIRS + 1)]
        assert os.path.samefile(pairs[0].a, os.path.join(a_folder, "1.png"))


# ---- sizes: own size, padding, resizing, tiles ---------------------------------------------

def synthetic_pair(height, width, seed):
    """uint8 A [H, W] (a textured bright blob) and B [H, W, 3] (its uptake, hot-mapped on black)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    blob = np.exp(-((rows - 0.5 * height) ** 2 + (cols - 0.4 * width) ** 2)
                  / (2 * (0.2 * min(height, width)) ** 2))
    a = 255 * (0.2 + 0.6 * blob) * rng.uniform(0.8, 1.0, (height, width))
    b = color.apply_colormap(np.where(blob > 0.3, 255 * blob, 0.0)[..., None], "hot")
    return a.astype(np.uint8), b.astype(np.uint8)


def write_folders(root, pairs):
    """Folders root/A and root/B of the pairs {name: (a, b)}; returns their paths."""
    folders = os.path.join(root, "A"), os.path.join(root, "B")
    for folder in folders:
        os.makedirs(folder)
    for name, images_of_pair in pairs.items():
        for folder, image in zip(folders, images_of_pair):
            Image.fromarray(image).save(os.path.join(folder, name))
    return folders


def read_outputs(out, stem):
    """{kind: array} of everything written for pair `stem`."""
    extras = os.path.join(out, fusion.EXTRAS_FOLDER, stem)
    arrays = {name[:-4]: (np.load if name.endswith(".npy") else images.read_image)(
        os.path.join(extras, name)) for name in os.listdir(extras)}
    return dict(arrays, fused=images.read_image(os.path.join(out, stem + ".png")))


@pytest.fixture(scope="module")
def odd_sizes(data_root, tmp_path_factory):
    """Folders of three pairs: 1 and 3 those of the generated set (32 x 32), between them a
    27 x 41 A (rows x columns; padded to 28 x 42) whose B is 20 x 30."""
    a_folder, b_folder = pet_folders(data_root)
    generated = {name: (images.read_image(os.path.join(a_folder, name)),
                        images.read_image(os.path.join(b_folder, name)))
                 for name in ("1.png", "3.png")}
    a, _ = synthetic_pair(27, 41, seed=5)
    _, b = synthetic_pair(20, 30, seed=5)
    root = str(tmp_path_factory.mktemp("odd"))
    return write_folders(root, {"1.png": generated["1.png"], "2.png": (a, b),
                                "3.png": generated["3.png"]})


def test_each_pair_keeps_its_size_order_and_noise(odd_sizes, checkpoint, fused, tmp_path,
                                                  capsys):
    a_folder, b_folder = odd_sizes
    out = str(tmp_path / "out")
    status, _ = fuse_status(capsys, "--checkpoint", checkpoint, "--a-dir", a_folder,
                            "--b-dir", b_folder, "--out", out, "--batch-size", "4",
                            "--save-extras")
    assert status == 0
    for stem, size in (("1", (32, 32)), ("2", (27, 41)), ("3", (32, 32))):
        outputs = read_outputs(out, stem)
        assert len(outputs) == 12
        for kind, array in outputs.items():
            if kind != "deformation_grid":  # a picture of the field, drawn larger
                assert array.shape[:2] == size, (stem, kind)
    # pairs 1 and 3 are fused in one batch, 2 alone, yet each with the noise of its name:
    # 1 and 3 come out as when the generated set was fused (pairs 1 to 5)
    for stem in ("1", "3"):
        np.testing.assert_array_equal(read_outputs(out, stem)["fused"],
                                      images.read_image(os.path.join(fused, stem + ".png")))
    # B (20 x 30, A's aspect ratio) was resized to A's size; registration is off, so warped B
    # is that B
    b_resized = np.asarray(Image.open(os.path.join(b_folder, "2.png")).resize(
        (41, 27), Image.BILINEAR)).astype(int)
    assert np.abs(read_outputs(out, "2")["warped_b"].astype(int) - b_resized).max() <= 2


def test_resize_fuses_every_pair_at_one_size(odd_sizes, checkpoint, fused, tmp_path, capsys):
    a_folder, b_folder = odd_sizes
    out = str(tmp_path / "out")
    status, _ = fuse_status(capsys, "--checkpoint", checkpoint, "--a-dir", a_folder,
                            "--b-dir", b_folder, "--out", out, "--batch-size", "4",
                            "--save-extras", "--resize", "32")
    assert status == 0
    for stem in ("1", "3"):  # already 32 x 32: as fused without --resize
        np.testing.assert_array_equal(read_outputs(out, stem)["fused"],
                                      images.read_image(os.path.join(fused, stem + ".png")))
    outputs = read_outputs(out, "2")
    assert outputs["fused"].shape == (32, 32, 3) and outputs["deformation"].shape == (32, 32, 2)
    b_resized = np.asarray(Image.open(os.path.join(b_folder, "2.png")).resize(
        (32, 32), Image.BILINEAR)).astype(int)
    assert np.abs(outputs["warped_b"].astype(int) - b_resized).max() <= 2


def test_compat_model_skips_pairs_of_other_sizes(pet_fuser, data_root, config):
    model = config.model.copy_and_resolve_references()
    model.compat = True
    compat_config = config.copy_and_resolve_references()
    compat_config.model = model
    compat = dataclasses.replace(pet_fuser, config=compat_config)
    layout = layouts.layout_from_config(config.data, "pet")
    pair = layouts.list_pairs(data_root, layout)[0]
    # two levels: a 32 x 32 bottleneck needs 64 x 64 images (256 x 256 with the paper's four)
    assert fusion.read_input(compat, pair, resize_to=None) == (
        None, "pair '1.png' is 32x32: the published model (model.compat) fuses 64x64 images "
              "only (its fixed 32x32 bottleneck); pass --resize 64")
    prepared, _ = fusion.read_input(compat, pair, resize_to=64)
    assert prepared.a.shape == (64, 64, 1)
    assert sizes.compat_size_error(model, (63, 64), (64, 64), tile=128, multiple=2) is None
    assert sizes.compat_size_error(model, (181, 217), (256, 256), tile=128, multiple=2) == (
        "217x181, padded to 256x256: the published model (model.compat) fuses 64x64 images "
        "only (its fixed 32x32 bottleneck); pass --resize 64")


class PointwiseNetwork:
    """A stand-in for the U-Net whose outputs at a pixel depend on that pixel only: evaluating
    it in tiles must give its whole-image outputs."""

    def apply(self, variables, x, t, train=False):
        return unet.UNetOutput(noise=x[..., :1] + t[:, None, None, None].astype(x.dtype),
                               m1=jax.numpy.sin(x[..., 1:2]), m2=x[..., 2:3] ** 2,
                               deformation=variables["scale"] * x[..., :2])


@pytest.mark.parametrize("height, width, tile, count", [
    (37, 50, 16, 3 * 4), (16, 40, 16, 1 * 3), (64, 64, 16, 5 * 5), (10, 12, 16, 1)])
def test_tiles_cover_the_input_with_weights_summing_to_one(height, width, tile, count):
    starts = tiling.windows(height, width, tile)
    rows, cols = tiling.window_shape(height, width, tile)
    weights = tiling.blend_weights(height, width, tile)
    assert len(starts) == len(weights) == count and weights.shape[1:] == (rows, cols, 1)
    total = np.zeros((height, width))
    for (top, left), weight in zip(starts, weights):
        assert 0 <= top <= height - rows and 0 <= left <= width - cols
        total[top:top + rows, left:left + cols] += weight[..., 0]
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)
    for axis_starts, size in ((sorted({t for t, _ in starts}), rows),
                              (sorted({l for _, l in starts}), cols)):
        gaps = np.diff(axis_starts)  # neighbours share tile // 4 pixels, less one for rounding
        assert np.all(size - gaps >= tile // tiling.OVERLAP_DIVISOR - 1)


def test_tiled_network_of_a_pointwise_network_is_that_network():
    x = np.random.default_rng(0).normal(size=(2, 37, 50, 4)).astype(np.float32)
    t = np.array([3, 7], np.int32)
    variables = {"scale": np.float32(1.5)}
    whole = PointwiseNetwork().apply(variables, x, t)
    tiled = jax.jit(lambda x, t: tiling.TiledNetwork(PointwiseNetwork(), 16).apply(
        variables, x, t))(x, t)
    for name, expected, got in zip(unet.UNetOutput._fields, whole, tiled):
        np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=name)


def test_tiled_network_keeps_the_regions_whole_image(checkpoint, data_root, config, tmp_path):
    out = str(tmp_path / "tiled")
    result = fusion.fuse_folder(checkpoint, out, data=data_root, steps=2, tile=16,
                                save_extras=True, show_progress=False)
    assert result.tiled == result.names
    assert result.summary().endswith(f"(2 steps, {NUM_PAIRS} in tiles)")
    layout = layouts.layout_from_config(config.data, "pet")
    rules = regions.rules_from_config(config.regions, "pet", "sample")
    shares = []
    for pair in layouts.list_pairs(data_root, layout):
        _, b = layouts.read_pair(pair, layout)  # registration is off: B is fused as it is
        outputs = read_outputs(out, os.path.splitext(pair.name)[0])
        assert outputs["fused"].shape == (32, 32, 3)
        # the PET rules compare each pixel with the whole image's pixel (row 0, column 5),
        # not with that of the 16 x 16 window it was evaluated in
        for channel, rule in ((1, rules.cr), (2, rules.cb)):
            values = b[..., channel]
            threshold = np.float32(rule.threshold) * values[0, 5]
            expected = values >= threshold if rule.above else values <= threshold
            name = f"region_{'cr' if channel == 1 else 'cb'}"
            np.testing.assert_array_equal(outputs[name] == 255, expected)
            shares.append(expected.mean())
    assert 0.05 < max(shares) < 0.95  # the generated pairs have real regions


@pytest.mark.slow
def test_large_and_non_square_pairs_keep_their_size(checkpoint, tmp_path, capsys):
    """256 x 256, 181 x 217 and 300 x 260 pairs in one folder (network in 64 px tiles: this
    two-level U-Net's bottleneck is half the image); about a minute on two cores."""
    sizes = {"1.png": (256, 256), "2.png": (181, 217), "3.png": (300, 260)}
    a_folder, b_folder = write_folders(str(tmp_path / "data"), {
        name: synthetic_pair(*size, seed=i) for i, (name, size) in enumerate(sizes.items())})
    out = str(tmp_path / "out")
    status, _ = fuse_status(capsys, "--checkpoint", checkpoint, "--a-dir", a_folder,
                            "--b-dir", b_folder, "--out", out, "--steps", "2", "--tile", "64",
                            "--save-extras")
    assert status == 0
    for name, size in sizes.items():
        outputs = read_outputs(out, os.path.splitext(name)[0])
        for kind, array in outputs.items():
            if kind != "deformation_grid":
                assert array.shape[:2] == size, (name, kind)
        b = images.read_image(os.path.join(b_folder, name)).astype(int)
        assert np.abs(outputs["warped_b"].astype(int) - b).max() <= 2
        np.testing.assert_array_equal(outputs["deformation"], 0.0)


# ---- the Python API, size buckets, shares, resuming ----------------------------------------

@pytest.mark.parametrize("length, multiple, tile, side", [
    (1, 2, 128, 2), (9, 2, 128, 16), (16, 2, 128, 16), (17, 2, 128, 32), (100, 8, 512, 128),
    (256, 8, 512, 256), (300, 8, 512, 512), (513, 8, 512, 768), (181, 2, 64, 192),
    (40, 2, 48, 48), (1000, 8, 512, 1024)])
def test_bucket_sides(length, multiple, tile, side):
    assert sizes.bucket_side(length, multiple, tile) == side
    assert side % multiple == 0 and side >= length


def test_fifty_sizes_fall_in_a_few_buckets():
    rng = np.random.default_rng(0)
    shapes = {tuple(rng.integers(9, 513, 2)) for _ in range(50)}
    assert len({sizes.bucket_size(*shape, 8, 512) for shape in shapes}) <= 36  # 6 x 6 sides
    assert len({sizes.bucket_size(*shape, 8, 512) for shape in shapes
                if max(shape) <= 64}) <= 4


@pytest.mark.parametrize("a_size, b_size, matches", [
    ((27, 41), (20, 30), True), ((256, 256), (128, 128), True), ((32, 32), (32, 48), False),
    ((181, 217), (185, 217), False), ((181, 217), (183, 217), True), ((500, 400), (1000, 790),
                                                                     True)])
def test_aspect_ratios_must_match(a_size, b_size, matches):
    assert (sizes.aspect_error(a_size, b_size) is None) == matches


def test_shares_split_the_names_and_noise_ids_are_stable():
    names = [f"{i}.png" for i in range(200)]
    members = [[name for name in names if shards.in_share(name, (k, 3))] for k in range(3)]
    assert sorted(sum(members, [])) == sorted(names) and min(map(len, members)) > 50
    assert shards.noise_id("1.png") == int.from_bytes(
        __import__("hashlib").sha256(b"1.png").digest()[:8], "big") % 2 ** 31
    assert shards.combine((1, 3), process_index=1, process_count=2) == (3, 6)
    assert shards.parse_shard("2/4") == (2, 4)
    for text in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(UserError, match=f"--shard {text}: expected K/N"):
            shards.parse_shard(text)
    assert shards.shard_from_environment({}) == (0, 1)
    assert shards.shard_from_environment({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5",
                                          "SLURM_ARRAY_TASK_COUNT": "4"}) == (2, 4)


def test_shards_together_give_the_unsharded_outputs(checkpoint, data_root, fused, tmp_path,
                                                    monkeypatch, capsys):
    out = str(tmp_path / "out")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")  # the first share from the array task
    arguments = ["--checkpoint", checkpoint, "--data", data_root, "--out", out,
                 "--batch-size", "4", "--save-extras"]
    assert fuse_status(capsys, *arguments)[0] == 0
    first = set(modification_times(out))
    assert fuse_status(capsys, *arguments, "--shard", "1/2")[0] == 0
    assert 0 < len({name for name in first if name.endswith(".png") and os.sep not in name}) < 5
    reference, outputs = modification_times(fused), modification_times(out)
    assert sorted(outputs) == sorted(reference)
    for name in outputs:
        read = np.load if name.endswith(".npy") else images.read_image
        np.testing.assert_array_equal(read(os.path.join(out, name)),
                                      read(os.path.join(fused, name)), err_msg=name)


@pytest.fixture(scope="module")
def pet_fuser(checkpoint):
    return fuser_module.Fuser.from_checkpoint(checkpoint, task="pet", batch_size=4)


def test_fuser_on_arrays_equals_fuse_on_files(pet_fuser, data_root, fused, odd_sizes):
    a_folder, b_folder = pet_folders(data_root)
    names = [f"{i}.png" for i in range(1, NUM_PAIRS + 1)]
    a = np.stack([images.read_image(os.path.join(a_folder, name)) for name in names])
    b = np.stack([images.read_image(os.path.join(b_folder, name)) for name in names])
    expected = np.stack([images.read_image(os.path.join(fused, name)) for name in names])
    # uint8 [N, H, W] and [N, H, W, 3] in, uint8 [N, H, W, 3] out, in the files' order
    assert difffccf_jax.Fuser is fuser_module.Fuser
    np.testing.assert_array_equal(pet_fuser(a, b, names=names), expected)
    # floats in [0, 1] ([N, H, W, 1] A), a list in another order, with the masks and fields
    order = [4, 0, 2]
    outputs = pet_fuser([a[i, ..., None] / 255.0 for i in order],
                        [b[i] / np.float32(255) for i in order],
                        names=[names[i] for i in order], extras=True)
    for i, out in zip(order, outputs):
        np.testing.assert_array_equal(out.rgb, expected[i])
        extras = os.path.join(fused, fusion.EXTRAS_FOLDER, str(i + 1))
        np.testing.assert_array_equal(out.deformation, np.load(os.path.join(extras,
                                                                            "deformation.npy")))
        np.testing.assert_array_equal(color.to_uint8(255 * out.m1[..., 0]),
                                      images.read_image(os.path.join(extras, "mask_m1_y.png")))
    # a pair of another size (27 x 41, its B 20 x 30) fuses at its own size
    odd_a, odd_b = (images.read_image(os.path.join(folder, "2.png")) for folder in odd_sizes)
    (odd,) = pet_fuser([odd_a], [odd_b], names=["2.png"])
    assert odd.shape == (27, 41, 3) and odd.dtype == np.uint8
    with pytest.raises(UserError, match=r"B image 0: A is 41x27 but B is 27x41"):
        pet_fuser([odd_a], [np.swapaxes(images.resize(odd_b, (27, 41)), 0, 1)])
    with pytest.raises(UserError, match=r"A image 0: float image with values outside \[0, 1\]"):
        pet_fuser(a[:1] * 1.0, b[:1])


def test_fifty_distinct_sizes_compile_at_most_eight_programs(checkpoint):
    fuser = fuser_module.Fuser.from_checkpoint(checkpoint, task="pet", steps=1, batch_size=4)
    rng = np.random.default_rng(1)
    shapes = []
    while len(shapes) < 50:
        shape = int(rng.integers(9, 17)), int(rng.integers(9, 33))
        if shape not in shapes:
            shapes.append(shape)
    pairs = [synthetic_pair(*shape, seed=i) for i, shape in enumerate(shapes)]
    fused_pairs = fuser([a for a, _ in pairs], [b for _, b in pairs], ids=range(50))
    assert [image.shape for image in fused_pairs] == [shape + (3,) for shape in shapes]
    buckets = {fuser.bucket(*shape) for shape in shapes}
    assert buckets == {(16, 16), (16, 32)}
    assert fuser.compiled_programs == len(buckets) <= 8


@pytest.mark.slow
@pytest.mark.multiprocess
def test_killed_run_resumes_to_the_uninterrupted_outputs(checkpoint, config, tmp_path,
                                                         repo_root):
    """`fuse` killed (SIGKILL) after its first outputs, then run again: every pair is fused
    exactly once, and the outputs are bit-equal to an uninterrupted run's."""
    num_pairs = 24
    root = str(tmp_path / "data")
    generator.write_task(root, layouts.layout_from_config(config.data, "pet"), num_pairs,
                         config.data.image_size, seed=3)
    settings = dict(data=root, task="pet", steps=2, batch_size=4, show_progress=False)
    reference = str(tmp_path / "reference")
    fusion.fuse_folder(checkpoint, reference, **settings)
    out = str(tmp_path / "out")
    command = [sys.executable, "-m", "difffccf_jax.cli", "fuse", "--checkpoint", checkpoint,
               "--data", root, "--task", "pet", "--out", out, "--steps", "2",
               "--batch-size", "4"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [repo_root] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env)
    try:
        while process.poll() is None and not (
                os.path.isdir(out) and any(name.endswith(".png") for name in os.listdir(out))):
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    written = modification_times(out)
    assert process.returncode == -signal.SIGKILL and 0 < len(written) < num_pairs
    result = fusion.fuse_folder(checkpoint, out, **settings)
    assert sorted(result.reused) == sorted(written)
    assert len(result.names) == num_pairs and len(result.names) - len(result.reused) == (
        num_pairs - len(written))
    after = modification_times(out)
    assert {name: after[name] for name in written} == written  # nothing fused twice
    assert not [name for name in os.listdir(out) if name.startswith(".")]  # no temporaries
    assert sorted(after) == sorted(modification_times(reference))
    for name in after:
        np.testing.assert_array_equal(images.read_image(os.path.join(out, name)),
                                      images.read_image(os.path.join(reference, name)))


FUSE_WORKER = "import sys; from difffccf_jax import cli; sys.exit(cli.main(sys.argv[1:]))"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_fuse_each_pair_once_as_one_process_does(checkpoint, data_root,
                                                                tmp_path):
    """`difffccf fuse` as 2 processes of 2 CPU devices each (jax.distributed): each pair is
    fused by one process, the outputs equal one process's on 2 devices, and process 0 alone
    closes the run (one line, one failures list, the same exit status in both)."""
    a_source, b_source = pet_folders(data_root)
    a_dir, b_dir = str(tmp_path / "A"), str(tmp_path / "B")
    for source, folder in ((a_source, a_dir), (b_source, b_dir)):
        os.makedirs(folder)
        for index in range(10):
            shutil.copyfile(os.path.join(source, f"{index % NUM_PAIRS + 1}.png"),
                            os.path.join(folder, f"{index}.png"))
    reference = str(tmp_path / "reference")
    fusion.fuse_folder(checkpoint, reference, a_dir=a_dir, b_dir=b_dir, task="pet",
                       steps=2, batch_size=4, devices=jax.local_devices()[:2],
                       show_progress=False)
    out = str(tmp_path / "out")
    command = ("fuse", "--checkpoint", checkpoint, "--task", "pet", "--a-dir", a_dir,
               "--b-dir", b_dir, "--out", out, "--steps", "2", "--batch-size", "4")

    def closing_lines(results, status):
        assert [result[0] for result in results] == [status, status], results
        lines = [[line for line in output.splitlines() if line.startswith("fused ")]
                 for _, output in results]
        assert lines[1] == [] and len(lines[0]) == 1, results
        return lines[0][0]

    first = closing_lines(run_two_processes([(FUSE_WORKER, *command)] * 2), 0)
    assert first == f"fused 10 pet pairs into {out} (2 steps)"
    written = modification_times(out)
    assert sorted(written) == sorted(modification_times(reference)) == sorted(
        f"{index}.png" for index in range(10))
    for name in written:
        np.testing.assert_array_equal(images.read_image(os.path.join(out, name)),
                                      images.read_image(os.path.join(reference, name)))
    # again with an A whose B is missing: nothing fused twice, the pair listed once
    shutil.copyfile(os.path.join(a_source, "1.png"), os.path.join(a_dir, "10.png"))
    second = closing_lines(run_two_processes([(FUSE_WORKER, *command)] * 2), 1)
    failures = os.path.join(out, "failures.jsonl")
    assert second == (f"fused 0 pet pairs into {out} (2 steps), 10 done before, skipped 1: "
                      f"see {failures}")
    with open(failures, encoding="utf-8") as file:
        assert [json.loads(line)["name"] for line in file] == ["10.png"]
    assert sorted(os.listdir(out)) == sorted(list(written) + ["failures.jsonl"])
    assert {name: mtime for name, mtime in modification_times(out).items()
            if name != "failures.jsonl"} == written
