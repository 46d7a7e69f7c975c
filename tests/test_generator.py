"""The paired-data generator: the five tasks, their physics on the template anatomy and on the
phantom, the clinical colour maps, determinism, misalignment fields, atomic writes, the
make-data command, which refuses the template anatomy clearly when nilearn is missing."""

import importlib.util
import os

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from difffccf_jax import cli, color, files
from difffccf_jax.config_cli import load_config
from difffccf_jax.data import (cells, colormaps, fields, gallery, generator, images, layouts,
                               misalign, phantom, template)
from difffccf_jax.errors import UserError

SIZE = 64
COLOUR_TASKS = ("pet", "spect", "gfp")


@pytest.fixture(scope="module")
def paper_layouts(paper_config_path):
    config = load_config(paper_config_path)
    return {task: layouts.layout_from_config(config.data, task) for task in generator.TASKS}


@pytest.mark.parametrize("anatomy", generator.ANATOMIES)
@pytest.mark.parametrize("task", generator.TASKS)
def test_every_task_generates_a_plausible_pair(task, anatomy):
    pair = generator.make_pair(task, SIZE, seed=0, index=0, anatomy=anatomy)
    assert pair.a.shape == (SIZE, SIZE) and pair.a.dtype == np.uint8
    expected_b = (SIZE, SIZE, 3) if task in COLOUR_TASKS else (SIZE, SIZE)
    assert pair.b.shape == expected_b and pair.b.dtype == np.uint8
    assert pair.displacement is None and pair.b_aligned is pair.b
    for image in (pair.a, pair.b):
        assert image.std() > 5 and image.max() >= 150  # structured and bright somewhere
        assert (image == 255).mean() < 0.2  # not saturated
    if task != "gfp":  # brain tasks: dark air in the corners, anatomy in the middle
        for image in (pair.a, pair.b):
            grey = image if image.ndim == 2 else image.mean(axis=-1)
            corner, centre = grey[:6, :6].mean(), grey[24:40, 24:40].mean()
            assert corner < 30 and centre > corner + 20
    else:  # green fluorescence on a dark background, phase contrast on a grey one
        assert pair.b[..., 1].mean() > 3 * pair.b[..., 0].mean()
        assert np.median(pair.b[..., 1]) < 20 and 80 < np.median(pair.a) < 180


@pytest.mark.parametrize("sigma", [0.5, 1.5, 3.0])  # direct convolution, then FFT
def test_gaussian_blur_matches_scipy_with_periodic_edges(sigma):
    image = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    expected = ndimage.gaussian_filter(image.astype(np.float64), (sigma, sigma, 0), mode="wrap",
                                       truncate=3.0 if sigma <= 2 else 8.0)
    np.testing.assert_allclose(fields.gaussian_blur(image, sigma), expected, atol=1e-6)


def test_smooth_noise_is_standardised_and_correlated_over_sigma():
    field = fields.smooth_noise(np.random.default_rng(0), (256, 256), 12.0)
    assert abs(field.mean()) < 1e-5 and abs(field.std() - 1) < 1e-4

    def correlation(shift):
        return np.mean(field[:, shift:] * field[:, :-shift])

    assert correlation(2) > 0.9 and correlation(48) < 0.3


@pytest.fixture(scope="module")
def anatomies():
    return [phantom.random_slice(np.random.default_rng(seed), 128) for seed in range(4)]


def pure(anatomy, tissue):
    return anatomy.fractions[tissue] > 0.99


def test_anatomy_fractions_are_partial_volumes(anatomies):
    for anatomy in anatomies:
        total = sum(anatomy.fractions.values()) + sum(lesion.fraction for lesion in anatomy.lesions)
        assert total.min() >= -1e-5 and total.max() <= 1 + 1e-5
        for tissue in ("scalp", "csf", "grey", "white"):
            assert pure(anatomy, tissue).sum() > 20, tissue
        bone = anatomy.fractions["skull"] + anatomy.fractions["marrow"]
        assert (bone > 0.99).sum() > 20


def test_pet_uptake_is_three_to_four_times_higher_in_grey_than_white_matter(anatomies):
    for seed, anatomy in enumerate(anatomies):
        activity = phantom.uptake(anatomy, np.random.default_rng(seed))
        lesion_free = sum(lesion.fraction for lesion in anatomy.lesions) == 0
        grey = activity[pure(anatomy, "grey") & lesion_free]
        white = activity[pure(anatomy, "white") & lesion_free]
        # multiplicative texture of +-8 % and hot spots perturb single pixels, not medians
        assert 2.7 < np.median(grey) / np.median(white) < 4.4


def test_mri_and_ct_contrasts(anatomies):
    anatomy = anatomies[0]
    rng = np.random.default_rng(0)
    t1 = phantom.render_mri(anatomy, rng, "T1")
    t2 = phantom.render_mri(anatomy, rng, "T2")
    ct = phantom.render_ct(anatomy, rng)

    def mean(image, tissue):
        return image[pure(anatomy, tissue)].mean()

    assert mean(t1, "white") > mean(t1, "grey") > mean(t1, "csf")
    assert mean(t2, "csf") > mean(t2, "grey") > mean(t2, "white")
    assert mean(ct, "skull") > 0.95 > mean(ct, "grey") > mean(ct, "white") > mean(ct, "csf")


def test_spect_is_smoother_and_noisier_than_pet(anatomies):
    """Counts binned coarser and blurred more: less fine detail; fewer counts: more noise."""
    anatomy = anatomies[1]
    activity = phantom.uptake(anatomy, np.random.default_rng(0))
    pet = phantom.render_emission(activity, np.random.default_rng(1), 7.0, 120.0)
    spect = phantom.render_emission(activity, np.random.default_rng(1), 13.0, 30.0, block=2)
    def sharpness(image):
        return np.abs(np.diff(ndimage.gaussian_filter(image, 1.0), axis=1)).mean()

    assert sharpness(spect) < sharpness(pet)
    noiseless_pet = phantom.render_emission(activity, np.random.default_rng(1), 7.0, 1e9)
    noiseless_spect = phantom.render_emission(activity, np.random.default_rng(1), 13.0, 1e9,
                                              block=2)
    assert np.std(spect - noiseless_spect) > np.std(pet - noiseless_pet)


def test_gfp_glows_only_inside_cells():
    rng = np.random.default_rng(3)
    culture = cells.random_culture(rng, 128)
    intensity = cells.render_fluorescence(culture, rng)
    far_from_cells = culture.radius > 2.0
    background = intensity[far_from_cells].mean()
    assert background < 0.06 and intensity[culture.radius < 0.8].max() > 4 * background
    phase = cells.render_phase_contrast(culture, rng)
    inside, medium = phase[culture.radius < 0.7].mean(), phase[far_from_cells].mean()
    halo = phase[(culture.radius > 1.1) & (culture.radius < 1.2)].mean()
    assert inside < medium < halo


def test_pairs_are_deterministic_per_seed_and_index():
    first = generator.make_pair("pet", SIZE, seed=5, index=2)
    again = generator.make_pair("pet", SIZE, seed=5, index=2)
    np.testing.assert_array_equal(first.a, again.a)
    np.testing.assert_array_equal(first.b, again.b)
    other_seed = generator.make_pair("pet", SIZE, seed=6, index=2)
    other_index = generator.make_pair("pet", SIZE, seed=5, index=3)
    assert np.abs(first.a.astype(int) - other_seed.a).mean() > 5
    assert np.abs(first.a.astype(int) - other_index.a).mean() > 5


def scipy_warp(image, displacement):
    """Independent oracle of the convention: image sampled at (x + dx, y + dy), bilinear, 0
    outside (zero padding: 'grid-constant'), channel by channel with scipy."""
    rows, columns = np.mgrid[0:image.shape[0], 0:image.shape[1]].astype(np.float64)
    coordinates = [rows + displacement[..., 1], columns + displacement[..., 0]]
    if image.ndim == 2:
        return ndimage.map_coordinates(image.astype(np.float64), coordinates, order=1,
                                       mode="grid-constant", cval=0.0)
    return np.stack([scipy_warp(image[..., c], displacement) for c in range(image.shape[-1])],
                    axis=-1)


def misalignment_error(image, reference):
    """Mean absolute difference of the two images after a blur that removes the pixel noise
    (which interpolation smooths and so cannot be undone), away from the border."""
    if image.ndim == 3:
        image, reference = image.mean(axis=-1), reference.mean(axis=-1)
    difference = ndimage.gaussian_filter(image.astype(np.float64) - reference, 1.5)
    return np.abs(difference)[8:-8, 8:-8].mean()


def test_field_realigns_a_smooth_image_almost_exactly():
    """A noise-free smooth image moved by a random motion is restored by the saved field."""
    y, x = np.mgrid[0:96, 0:96] / 96.0
    image = (np.sin(9 * x + 2) * np.cos(7 * y) + np.exp(-((x - 0.4) ** 2 + (y - 0.6) ** 2) * 30)
             ).astype(np.float32)
    moved, field = misalign.apply_motion(image, misalign.random_motion(
        np.random.default_rng(5), 96))
    inner = (slice(6, -6), slice(6, -6))
    before = np.abs(moved - image)[inner].mean()
    # what remains is the smoothing of two bilinear interpolations
    assert np.abs(scipy_warp(moved, field) - image)[inner].mean() < 0.1 * before
    assert np.abs(scipy_warp(moved, -field) - image)[inner].mean() > before  # the sign matters


@pytest.mark.parametrize("task, anatomy", [("pet", "phantom"), ("ct", "phantom"),
                                           ("gfp", "phantom"), ("pet", "template"),
                                           ("spect", "template"), ("ct", "template")])
def test_saved_field_realigns_the_moved_b(task, anatomy):
    pair = generator.make_pair(task, 128, seed=1, index=0, misalign_b=True, anatomy=anatomy)
    aligned = generator.make_pair(task, 128, seed=1, index=0, anatomy=anatomy)
    np.testing.assert_array_equal(pair.a, aligned.a)  # misalignment leaves the content alone
    np.testing.assert_array_equal(pair.b_aligned, aligned.b)
    field = pair.displacement
    assert field.shape == (128, 128, 2) and field.dtype == np.float32
    assert 0.2 < np.abs(field).mean() and np.abs(field).max() < 5.0
    before = misalignment_error(pair.b, aligned.b)
    assert misalignment_error(scipy_warp(pair.b, field), aligned.b) < 0.6 * before


def test_saved_field_follows_the_registration_warp_convention():
    """warping.warp (the network's warp) with the saved field equals the scipy oracle."""
    from difffccf_jax.model import warping

    pair = generator.make_pair("adni", SIZE, seed=2, index=0, misalign_b=True)
    warped = jax.jit(warping.warp)(pair.b[None, ..., None].astype(np.float32),
                                        pair.displacement[None])
    np.testing.assert_allclose(np.asarray(warped)[0, ..., 0],
                               scipy_warp(pair.b, pair.displacement), atol=1e-3)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("strength", [1.0, misalign.MAX_STRENGTH])
def test_undoing_field_solves_its_equation(strength, seed):
    """d(p) = -u(p + d(p)) holds to 1e-4 pixels, u evaluated analytically, up to the
    strongest motion."""
    motion = misalign.random_motion(np.random.default_rng(seed), 96, strength)
    _, field = misalign.apply_motion(np.zeros((96, 96), np.float32), motion)
    x, y = misalign.pixel_grid(96)
    ux, uy = motion(x + field[..., 0], y + field[..., 1])
    assert np.abs(field[..., 0] + ux).max() < 1e-4 and np.abs(field[..., 1] + uy).max() < 1e-4


def test_motion_strength_scales_every_range():
    weak, strong = (misalign.random_motion(np.random.default_rng(3), 64, s) for s in (1.0, 4.0))
    np.testing.assert_allclose(strong.translation, 4 * weak.translation, rtol=1e-12)
    np.testing.assert_allclose(strong.amplitudes, 4 * weak.amplitudes, rtol=1e-12)
    np.testing.assert_array_equal(strong.frequencies, weak.frequencies)
    # rotation, zoom and shear: the linear part grows about four-fold (rotation is not linear
    # in the angle)
    ratio = np.abs(strong.linear).sum() / np.abs(weak.linear).sum()
    assert 3.9 < ratio < 4.1
    for bad in (0.0, -1.0, misalign.MAX_STRENGTH + 0.5):
        with pytest.raises(UserError, match="motion strength"):
            misalign.random_motion(np.random.default_rng(3), 64, bad)


def test_sample_bilinear_matches_scipy():
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 1, (20, 20, 3)).astype(np.float32)
    x, y = rng.uniform(-3, 23, (2, 20, 20)).astype(np.float32)
    field = np.stack([x - np.arange(20)[None, :], y - np.arange(20)[:, None]], axis=-1)
    np.testing.assert_allclose(misalign.sample_bilinear(image, x, y), scipy_warp(image, field),
                               atol=1e-5)


def test_written_set_has_published_layout_and_true_fields(tmp_path, paper_layouts):
    layout = paper_layouts["ct"]
    folder = generator.write_task(str(tmp_path / "mis"), layout, 2, SIZE, seed=4,
                                  misalign_b=True)
    generator.write_task(str(tmp_path / "aligned"), layout, 3, SIZE, seed=4)
    assert folder == str(tmp_path / "mis" / "HARVARD-CT-MRI")
    assert sorted(os.listdir(folder)) == ["CT", "MRI", "displacement"]
    assert sorted(os.listdir(os.path.join(folder, "MRI"))) == ["1.png", "2.png"]
    pairs = layouts.list_pairs(str(tmp_path / "mis"), layout)
    aligned_pairs = layouts.list_pairs(str(tmp_path / "aligned"), layout)
    assert [p.name for p in aligned_pairs] == ["1.png", "2.png", "3.png"]
    assert aligned_pairs[0].displacement is None
    for pair, aligned in zip(pairs, aligned_pairs):  # a set of 2 is a prefix of a set of 3
        np.testing.assert_array_equal(images.read_image(pair.a), images.read_image(aligned.a))
        field = layouts.read_displacement(pair, SIZE)
        b, b_aligned = images.read_image(pair.b), images.read_image(aligned.b)
        before = misalignment_error(b, b_aligned)
        assert misalignment_error(scipy_warp(b, field), b_aligned) < 0.6 * before
        # resampled to twice the size, the field is in the new pixels: twice as long
        np.testing.assert_allclose(layouts.read_displacement(pair, 2 * SIZE).mean(axis=(0, 1)),
                                   2 * field.mean(axis=(0, 1)), rtol=0.02, atol=0.02)


def test_write_files_leaves_nothing_when_a_file_fails(tmp_path):
    good, bad = str(tmp_path / "1.png"), str(tmp_path / "missing" / "1.png")
    with pytest.raises(FileNotFoundError):
        files.write_files([(good, np.zeros((4, 4), np.uint8)), (bad, np.zeros((4, 4), np.uint8))])
    assert os.listdir(tmp_path) == []  # neither the real name nor a temporary
    files.write_files([(good, np.full((4, 4), 7, np.uint8))])
    assert os.listdir(tmp_path) == ["1.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(good)), 7)


def test_bad_generator_arguments_are_user_errors(tmp_path, paper_layouts):
    with pytest.raises(UserError, match="unknown task 'mri'"):
        generator.make_pair("mri", SIZE, 0, 0)
    with pytest.raises(UserError, match="image size 8 is too small"):
        generator.make_pair("pet", 8, 0, 0)
    with pytest.raises(UserError, match="seed -1"):
        generator.make_pair("pet", SIZE, -1, 0)
    with pytest.raises(UserError, match="--num 0"):
        generator.write_task(str(tmp_path), paper_layouts["pet"], 0, SIZE, 0)
    generator.write_task(str(tmp_path), paper_layouts["pet"], 1, SIZE, 0)
    with pytest.raises(UserError, match="MRI already holds images; write to an empty --out"):
        generator.write_task(str(tmp_path), paper_layouts["pet"], 2, SIZE, 1)


def test_make_data_command(tmp_path, capsys):
    out = str(tmp_path / "data")
    status = cli.main(["make-data", "--task", "gfp", "--num", "2", "--size", "32", "--seed", "1",
                       "--out", out, "--misalign", "--motion-strength", "3",
                       "--config.data.layouts.gfp.a=phase"])
    assert status == 0
    assert "wrote 2 gfp pairs" in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(out, "GFP"))) == ["displacement", "g", "phase"]
    expected = generator.make_pair("gfp", 32, seed=1, index=1, misalign_b=True,
                                   motion_strength=3.0)
    np.testing.assert_array_equal(images.read_image(os.path.join(out, "GFP", "g", "2.png")),
                                  expected.b)
    np.testing.assert_array_equal(np.load(os.path.join(out, "GFP", "displacement", "2.npy")),
                                  expected.displacement)


def test_make_data_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert cli.main(["make-data", "--task", "pet", "--num", "0", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--num 0: expected at least one pair" in error
    assert cli.main(["make-data", "--task", "pet", "--num", "1", "--size", "32", "--misalign",
                     "--motion-strength", "9", "--out", str(tmp_path / "strong")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "motion strength 9.0 is outside (0, 6.0]" in error


# ---- the template anatomy (MNI152, the `realistic` extra) -----------------------------------

@pytest.fixture(scope="module")
def template_slices():
    return [template.random_slice(np.random.default_rng(seed), 128) for seed in range(4)]


def test_trilinear_sampling_reproduces_a_linear_volume_exactly():
    """Trilinear interpolation is exact for a linear function: a known answer that also fixes
    the (z, y, x) axis order."""
    z, y, x = np.meshgrid(np.arange(7), np.arange(9), np.arange(11), indexing="ij")
    volume = (2.0 * z + 3.0 * y + 5.0 * x).astype(np.float32)
    points = [np.random.default_rng(0).uniform(0, n - 1.01, (5, 6)).astype(np.float32)
              for n in volume.shape]
    (sampled,) = template._trilinear([volume], points)
    np.testing.assert_allclose(sampled, 2 * points[0] + 3 * points[1] + 5 * points[2],
                               rtol=1e-5)


def test_template_slice_is_a_head_of_partial_volumes(template_slices):
    """Fractions sum to at most 1; every tissue has pure pixels; from the image's left edge
    inwards along the middle row come air, scalp, skull, CSF, then the brain."""
    for anatomy in template_slices:
        fractions = anatomy.fractions
        total = sum(fractions.values()) + sum(lesion.fraction for lesion in anatomy.lesions)
        assert total.min() >= -1e-5 and total.max() <= 1 + 1e-5
        for tissue in ("scalp", "skull", "csf", "grey", "white"):
            assert (fractions[tissue] > 0.9).sum() > 10, tissue
        row = 64
        dominant = np.argmax(np.stack([1 - total[row]] + [fractions[name][row] for name in
                                                          ("scalp", "skull", "csf")]
                                      + [anatomy.parenchyma[row]]), axis=0)
        # first pixel of each kind from the left: air, scalp, skull, csf, brain in this order
        firsts = [int(np.argmax(dominant == kind)) for kind in range(5)]
        assert firsts[0] == 0 and firsts[1:] == sorted(firsts[1:]) and firsts[1] > 0


@pytest.mark.parametrize("seed", range(3))
def test_template_slices_are_shown_radiologically(seed):
    """The front (MNI +y) at the top, the subject's right (MNI +x) on the image's left, the
    image about 215-245 mm across and the slice between the levels drawn (tilt aside)."""
    size = 64
    pixel_mm = 230.0 / size
    x, y, z = template._slice_coordinates(np.random.default_rng(seed), size, pixel_mm)
    middle = size // 2
    assert y[0, middle] - y[-1, middle] > 0.8 * 230 and x[middle, 0] - x[middle, -1] > 0.8 * 230
    low, high = template.LEVELS_MM
    assert low - 20 < z[middle, middle] < high + 20


def test_template_pet_uptake_is_four_times_higher_in_grey_than_white_matter(template_slices):
    for seed, anatomy in enumerate(template_slices):
        activity = template.uptake(anatomy, np.random.default_rng(seed), 4.0)
        lesion_free = sum(lesion.fraction for lesion in anatomy.lesions) == 0
        grey = activity[(anatomy.fractions["grey"] > 0.99) & lesion_free]
        white = activity[(anatomy.fractions["white"] > 0.99) & lesion_free]
        # regional variation of +-6 % and hot spots perturb single pixels, not medians
        assert 3.7 < np.median(grey) / np.median(white) < 4.3


def test_template_mri_and_ct_contrasts(template_slices):
    anatomy = template_slices[0]
    rng = np.random.default_rng(0)
    t1 = template.render_mri(anatomy, rng, "T1")
    t2 = template.render_mri(anatomy, rng, "T2")
    ct = template.render_ct(anatomy, rng)

    def mean(image, tissue):
        return image[anatomy.fractions[tissue] > 0.9].mean()

    assert mean(t1, "white") > mean(t1, "grey") > mean(t1, "csf")
    assert mean(t1, "scalp") > mean(t1, "skull")  # fat bright, bone dark
    assert mean(t2, "csf") > mean(t2, "grey") > mean(t2, "white")
    assert mean(ct, "skull") > 0.95 > mean(ct, "grey") > mean(ct, "white") > mean(ct, "csf")
    assert 0.2 < mean(ct, "grey") < 0.8  # soft tissue grey in the brain window


@pytest.mark.parametrize("row, column", [(0, 0), (39, 39), (0, 39), (20, 39)])
def test_lesions_at_the_image_edge_stay_inside_the_tissue(row, column):
    """A lesion centred on an edge pixel is clipped by the image, not refused: its fraction is
    taken from the grey and white matter under it, so the three still sum to what they were."""
    size = 40
    grey = np.zeros((size, size), np.float32)
    grey[row, column] = 1.0  # the only candidate centre
    fractions = {"grey": grey, "white": np.zeros_like(grey)}
    before = fractions["grey"].copy()
    rng = next(np.random.default_rng(seed) for seed in range(100)
               if np.random.default_rng(seed).poisson(1.0) > 0)
    lesions = template._lesions(rng, size, 1.0, fractions)
    assert lesions and lesions[0].fraction[row, column] > 0
    total = fractions["grey"] + fractions["white"] + sum(lesion.fraction for lesion in lesions)
    np.testing.assert_allclose(total, before, atol=1e-6)


def test_template_pet_b_is_black_outside_the_head_and_hot_inside():
    """A PET B through the hot map: R >= G >= B everywhere, near black beyond the head, red to
    yellow over the grey matter."""
    size, seed, index = 128, 3, 2
    pair = generator.make_pair("pet", size, seed, index, anatomy="template")
    # the anatomy is the first draw of the pair's stream (generator.make_pair)
    anatomy = template.random_slice(
        np.random.default_rng([seed, generator.TASKS.index("pet"), index, 0]), size)
    b = pair.b.astype(int)
    assert np.all(b[..., 0] >= b[..., 1]) and np.all(b[..., 1] >= b[..., 2])
    head = sum(anatomy.fractions.values()) > 0
    far_outside = ndimage.distance_transform_edt(~head) > 8
    assert far_outside.mean() > 0.2 and b[far_outside].max() < 12
    grey = anatomy.fractions["grey"] > 0.9
    assert np.median(b[grey][:, 0]) > 200 and np.median(b[grey][:, 1]) > 40


def test_clinical_colour_maps():
    """hot: black to white with luminance never falling; rainbow: black at zero uptake, red at
    the peak; jet_on_black: JET, black where there is no signal."""
    hot = colormaps.lut("hot").astype(float)
    luminance = hot @ np.array(color.LUMA)
    assert np.all(np.diff(luminance) >= 0) and luminance[0] == 0 and luminance[-1] == 255
    rainbow = colormaps.lut("rainbow")
    assert rainbow[0].tolist() == [0, 0, 0] and rainbow[-1].tolist() == [255, 0, 0]
    values = np.array([[0.0, 0.01, 0.5, 1.0]], np.float32)
    jet = colormaps.colorize(values, "jet_on_black") * 255
    assert np.all(jet[0, :2] == 0)
    np.testing.assert_allclose(jet[0, 2:], color.colormap_lut("jet")[[128, 255]], atol=1e-3)
    with pytest.raises(ValueError, match="unknown colour map 'viridis'"):
        colormaps.colorize(values, "viridis")


def test_template_spect_uses_both_clinical_maps():
    """SPECT B is shown through the rainbow or the hot map, drawn per pair: both occur."""
    maps = set()
    for index in range(8):
        b = generator.make_pair("spect", 32, 0, index, anatomy="template").b.astype(int)
        maps.add("rainbow" if np.any(b[..., 2] > b[..., 0] + 30) else "hot")
    assert maps == {"rainbow", "hot"}


def test_template_pairs_are_deterministic_per_seed_and_index():
    first = generator.make_pair("spect", SIZE, seed=5, index=2, anatomy="template")
    again = generator.make_pair("spect", SIZE, seed=5, index=2, anatomy="template")
    np.testing.assert_array_equal(first.a, again.a)
    np.testing.assert_array_equal(first.b, again.b)
    other_index = generator.make_pair("spect", SIZE, seed=5, index=3, anatomy="template")
    assert np.abs(first.a.astype(int) - other_index.a).mean() > 5


def test_without_nilearn_the_template_is_refused_not_replaced(tmp_path, capsys, monkeypatch):
    """nilearn missing (a broken install, simulated): make-data stops with the reinstall hint
    and a non-zero exit, writing nothing; it never falls back to the phantom on its own."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "nilearn" else find_spec(name, *args))
    assert not template.available() and generator.DEFAULT_ANATOMY == "template"
    with pytest.raises(UserError, match="nilearn"):
        generator.make_pair("pet", SIZE, 0, 0, anatomy="template")
    out = str(tmp_path / "data")
    assert cli.main(["make-data", "--task", "pet", "--num", "1", "--size", "32",
                     "--out", out]) != 0
    assert "reinstall difffccf-jax" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_make_data_uses_the_template_when_installed(tmp_path, capsys):
    out = str(tmp_path / "data")
    assert cli.main(["make-data", "--task", "ct", "--num", "2", "--size", "32", "--seed", "4",
                     "--out", out, "--misalign"]) == 0
    assert "on the template anatomy" in capsys.readouterr().out
    expected = generator.make_pair("ct", 32, seed=4, index=1, misalign_b=True,
                                   anatomy="template")
    folder = os.path.join(out, "HARVARD-CT-MRI")
    np.testing.assert_array_equal(images.read_image(os.path.join(folder, "CT", "2.png")),
                                  expected.a)
    np.testing.assert_array_equal(np.load(os.path.join(folder, "displacement", "2.npy")),
                                  expected.displacement)


def test_gallery_shows_the_generated_pairs_side_by_side():
    size = 32
    figure = gallery.side_by_side(size=size, seed=2, template_pairs=1)
    assert figure.shape == (gallery.LABEL_HEIGHT + 3 * size, gallery.LABEL_WIDTH + 4 * size, 3)
    spect = generator.make_pair("spect", size, 2, 0, anatomy="template")
    top, left = gallery.LABEL_HEIGHT + size, gallery.LABEL_WIDTH  # spect row, first column
    np.testing.assert_array_equal(figure[top:top + size, left:left + size, 0], spect.a)
    np.testing.assert_array_equal(figure[top:top + size, left + size:left + 2 * size], spect.b)
    ct = generator.make_pair("ct", size, 2, 0, anatomy="phantom")
    top, left = gallery.LABEL_HEIGHT + 2 * size, gallery.LABEL_WIDTH + 3 * size
    np.testing.assert_array_equal(figure[top:top + size, left:left + size, 1], ct.b)


# ---- clean twins (noise=False): the same pair without scanner noise -------------------------

def _renderings(brain):
    """{name: render(anatomy, rng, noise)} of every modality of a brain module."""
    return {
        "T1": lambda anatomy, rng, noise: brain.render_mri(anatomy, rng, "T1", noise=noise),
        "T2": lambda anatomy, rng, noise: brain.render_mri(anatomy, rng, "T2", noise=noise),
        "CT": lambda anatomy, rng, noise: brain.render_ct(anatomy, rng, noise=noise),
        "PET": lambda anatomy, rng, noise: brain.render_pet(anatomy, rng, noise=noise),
        "SPECT": lambda anatomy, rng, noise: brain.render_spect(anatomy, rng, noise=noise),
    }


def _structure_ratio(difference, region, block=8):
    """RMS of the difference's block x block local means over its pixel RMS, inside region:
    about 1 / block for white noise, near 1 for a change of structure or scale."""
    local = ndimage.uniform_filter(difference.astype(np.float64), block)
    return np.sqrt(np.mean(local[region] ** 2) / np.mean(difference[region] ** 2))


def _twin_renderings(render, anatomy, seed):
    """(noisy, clean, clean again) images and whether the three left the stream in one
    state."""
    outputs, states = [], []
    for noise in (True, False, False):
        rng = np.random.default_rng(seed)
        outputs.append(render(anatomy, rng, noise))
        states.append(rng.bit_generator.state)
    return (*outputs, states[0] == states[1] == states[2])


@pytest.mark.parametrize("brain", [phantom, template], ids=["phantom", "template"])
def test_clean_rendering_makes_the_same_draws_and_differs_only_by_noise(brain):
    """Every modality with noise=False consumes the stream exactly as with noise (so every
    later draw of the pair is the same), is reproducible, and differs from the noisy image by
    noise alone: inside the brain the difference has no structure at the 8-pixel scale."""
    anatomy = brain.random_slice(np.random.default_rng(2), 96)
    brain_region = ndimage.binary_erosion(anatomy.parenchyma > 0.9, iterations=2)
    assert brain_region.sum() > 500
    for name, render in _renderings(brain).items():
        noisy, clean, again, same_draws = _twin_renderings(render, anatomy, 11)
        assert same_draws, name
        np.testing.assert_array_equal(clean, again)
        difference = noisy - clean
        assert np.abs(difference[brain_region]).mean() > 0.003, name  # the noise is there
        assert _structure_ratio(difference, brain_region) < 0.6, name


def test_clean_cell_images_make_the_same_draws_and_differ_only_by_noise():
    culture = cells.random_culture(np.random.default_rng(4), 96)
    everywhere = np.ones((96, 96), bool)
    for render in (cells.render_phase_contrast, cells.render_fluorescence):
        noisy, clean, again, same_draws = _twin_renderings(
            lambda _, rng, noise: render(culture, rng, noise=noise), None, 5)
        assert same_draws
        np.testing.assert_array_equal(clean, again)
        assert np.abs(noisy - clean).mean() > 0.005
        assert _structure_ratio(noisy - clean, everywhere) < 0.3
    # the autofluorescent background is signal, not noise: the clean twin keeps it
    clean = cells.render_fluorescence(culture, np.random.default_rng(5), noise=False)
    assert np.median(clean[culture.radius > 2.0]) == pytest.approx(0.02, abs=1e-6)


@pytest.mark.parametrize("brain", [phantom, template], ids=["phantom", "template"])
def test_clean_pet_is_the_expectation_of_the_noisy_pet_and_smooth(brain):
    """Poisson counts are unbiased and the twins share one intensity scale: over the brain
    the noisy PET's mean equals the clean one's to 0.6 % (scaling the clean twin by its own
    quantile would be off by 1-4 %); the clean twin's energy above 0.35 cycles per pixel is
    below 5 % of the noisy one's (the point spread removes it)."""
    def high_frequency_energy(image):
        spectrum = np.abs(np.fft.fft2(image - image.mean())) ** 2
        fy, fx = np.fft.fftfreq(image.shape[0]), np.fft.fftfreq(image.shape[1])
        return spectrum[np.hypot(fy[:, None], fx[None, :]) > 0.35].sum()

    for seed in range(4):
        anatomy = brain.random_slice(np.random.default_rng(seed), 128)
        noisy, clean, _, _ = _twin_renderings(_renderings(brain)["PET"], anatomy, 50 + seed)
        region = anatomy.parenchyma > 0.5
        assert abs(noisy[region].mean() / clean[region].mean() - 1) < 0.006, seed
        assert high_frequency_energy(clean) < 0.05 * high_frequency_energy(noisy), seed


@pytest.mark.parametrize("anatomy", generator.ANATOMIES)
@pytest.mark.parametrize("task", generator.TASKS)
def test_clean_twin_pair_has_the_same_content_field_and_colours(task, anatomy):
    """make_pair(noise=False): the same misalignment field exactly, the same shapes, and A, B
    and the aligned B differing from the noisy pair by structureless noise only."""
    pair = generator.make_pair(task, 96, seed=1, index=0, misalign_b=True, anatomy=anatomy)
    twin = generator.make_pair(task, 96, seed=1, index=0, misalign_b=True, anatomy=anatomy,
                               noise=False)
    np.testing.assert_array_equal(twin.displacement, pair.displacement)
    for noisy, clean in ((pair.a, twin.a), (pair.b, twin.b), (pair.b_aligned, twin.b_aligned)):
        assert clean.shape == noisy.shape and clean.dtype == np.uint8
        noisy_grey, clean_grey = (image.astype(np.float64) if image.ndim == 2
                                  else image.mean(axis=-1) for image in (noisy, clean))
        region = ndimage.uniform_filter(clean_grey, 5) > 30  # where there is signal
        difference = noisy_grey - clean_grey
        assert np.abs(difference[region]).mean() > 0.5  # noise of at least half a level
        assert _structure_ratio(difference, region) < 0.6


def test_clean_twins_keep_the_spect_colour_map_drawn_per_pair():
    maps = []
    for index in range(8):
        for noise in (True, False):
            b = generator.make_pair("spect", 32, 0, index, anatomy="template",
                                    noise=noise).b.astype(int)
            maps.append("rainbow" if np.any(b[..., 2] > b[..., 0] + 30) else "hot")
    assert maps[0::2] == maps[1::2] and set(maps) == {"rainbow", "hot"}


def test_written_clean_twins_mirror_the_noisy_set(tmp_path, paper_layouts):
    layout = paper_layouts["pet"]
    noisy_root, clean_root = str(tmp_path / "noisy"), str(tmp_path / "clean")
    generator.write_task(noisy_root, layout, 2, SIZE, seed=6, misalign_b=True,
                         clean_twins_out=clean_root)
    noisy_pairs = layouts.list_pairs(noisy_root, layout)
    clean_pairs = layouts.list_pairs(clean_root, layout)
    assert [p.name for p in clean_pairs] == [p.name for p in noisy_pairs] == ["1.png", "2.png"]
    assert sorted(os.listdir(os.path.join(clean_root, layout.folder))) == sorted(
        os.listdir(os.path.join(noisy_root, layout.folder)))
    for index, (noisy, clean) in enumerate(zip(noisy_pairs, clean_pairs)):
        twin = generator.make_pair("pet", SIZE, 6, index, misalign_b=True, noise=False)
        np.testing.assert_array_equal(images.read_image(clean.a), twin.a)
        np.testing.assert_array_equal(images.read_image(clean.b), twin.b)
        np.testing.assert_array_equal(np.load(clean.displacement), np.load(noisy.displacement))
        assert not np.array_equal(images.read_image(clean.a), images.read_image(noisy.a))


def test_clean_twins_need_their_own_empty_folder(tmp_path, paper_layouts):
    layout = paper_layouts["ct"]
    root = str(tmp_path / "data")
    with pytest.raises(UserError, match="--clean-twins .*: expected another folder than --out"):
        generator.write_task(root, layout, 1, SIZE, 0, clean_twins_out=root + "/.")
    generator.write_task(str(tmp_path / "other"), layout, 1, SIZE, 0)
    with pytest.raises(UserError, match="already holds images; write to an empty --clean-twins"):
        generator.write_task(root, layout, 1, SIZE, 0, clean_twins_out=str(tmp_path / "other"))
    assert not os.path.exists(root)  # both folders are checked before anything is created


def test_make_data_writes_clean_twins(tmp_path, capsys):
    out, clean = str(tmp_path / "data"), str(tmp_path / "clean")
    assert cli.main(["make-data", "--task", "adni", "--num", "2", "--size", "32", "--seed", "3",
                     "--anatomy", "phantom", "--out", out, "--clean-twins", clean]) == 0
    printed = capsys.readouterr().out
    assert f"wrote their clean twins to {os.path.join(clean, 'ADNI')}" in printed
    twin = generator.make_pair("adni", 32, seed=3, index=1, noise=False)
    np.testing.assert_array_equal(images.read_image(os.path.join(clean, "ADNI", "PET", "2.png")),
                                  twin.b)
