"""Baseline fusion rules and the `difffccf evaluate` command on generated pairs."""

import csv
import json
import math
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from difffccf_jax import cli, color, files
from difffccf_jax.evaluation import baselines, metrics, scoring
from difffccf_jax.config_cli import load_config
from difffccf_jax.data import generator, layouts
from difffccf_jax.errors import UserError

SIZE = 48  # at least metrics.VIF_MIN_SIZE, so every metric is defined on real images
NUM_PAIRS = 3


# ---------------------------------------------------------------- baselines


def test_average_and_maximum_rules():
    a = np.array([[[100]]], np.uint8)
    b = np.array([[[200, 50, 1]]], np.uint8)
    np.testing.assert_array_equal(baselines.average_fusion(a, b), [[[150, 75, 50]]])  # 50.5 -> 50
    np.testing.assert_array_equal(baselines.maximum_fusion(a[..., 0], b), [[[200, 100, 100]]])


def test_ycrcb_rules_keep_the_colour_of_b():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32, 1)).astype(np.uint8)
    b = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    b_ycrcb = color.rgb_to_ycrcb(b.astype(np.float64))
    for fused, expected_y in (
            (baselines.ycrcb_maximum_fusion(a, b), np.maximum(a[..., 0], b_ycrcb[..., 0])),
            (baselines.ycrcb_weighted_fusion(a, b, weight=0.25),
             0.25 * a[..., 0] + 0.75 * b_ycrcb[..., 0])):
        assert fused.dtype == np.uint8 and fused.shape == b.shape
        fused_ycrcb = color.rgb_to_ycrcb(fused.astype(np.float64))
        unsaturated = np.all((fused > 0) & (fused < 255), axis=-1)
        assert unsaturated.mean() > 0.5
        # only the final rounding to uint8 separates the result from the rule (half a level)
        assert np.abs(fused_ycrcb[..., 1:] - b_ycrcb[..., 1:])[unsaturated].max() <= 0.51
        assert np.abs(fused_ycrcb[..., 0] - expected_y)[unsaturated].max() <= 0.51
    # a black anatomy changes nothing: Y = max(0, Y of B) gives B back
    np.testing.assert_array_equal(baselines.ycrcb_maximum_fusion(np.zeros_like(a), b), b)


def test_a_luminance_is_a_with_the_chroma_of_b():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (32, 32)).astype(np.uint8)
    b = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    fused = baselines.BASELINES["a-luminance"](a, b)
    assert fused.dtype == np.uint8 and fused.shape == b.shape
    fused_ycrcb = color.rgb_to_ycrcb(fused.astype(np.float64))
    unsaturated = np.all((fused > 0) & (fused < 255), axis=-1)
    assert unsaturated.mean() > 0.5
    # the grey version is A and the chroma B's, up to the rounding of RGB to uint8
    assert np.abs(fused_ycrcb[..., 0] - a)[unsaturated].max() <= 0.51
    np.testing.assert_array_equal(metrics.grey_image(fused)[unsaturated], a[unsaturated])
    b_ycrcb = color.rgb_to_ycrcb(b.astype(np.float64))
    assert np.abs(fused_ycrcb[..., 1:] - b_ycrcb[..., 1:])[unsaturated].max() <= 0.51
    # B's luma is ignored: a B with the same chroma and another luma gives the same image (up
    # to a level: the published YCrCb matrices are inverses to 3 decimals only)
    brighter = color.ycrcb_to_rgb(b_ycrcb + np.array([20.0, 0, 0]))
    difference = baselines.a_luminance_fusion(a, brighter).astype(int) - fused
    assert np.abs(difference).max() <= 1 and np.mean(difference != 0) < 0.05
    # a grey B (no chroma) gives A on every channel, exactly
    np.testing.assert_array_equal(baselines.a_luminance_fusion(a[..., None], np.full_like(b, 77)),
                                  np.repeat(a[..., None], 3, axis=-1))
    np.testing.assert_array_equal(baselines.LUMA_RULES["a-luminance"](a, b), a)
    np.testing.assert_array_equal(baselines.LUMA_RULES["ycrcb-maximum"](a, b),
                                  np.maximum(a, b_ycrcb[..., 0]))


MULTI_SCALE_RULES = ("laplacian", "max-low-a-detail")


def _checkerboard(shape, mean, amplitude):
    rows, cols = np.indices(shape)
    return mean + amplitude * np.where((rows + cols) % 2 == 0, 1.0, -1.0)


@pytest.mark.parametrize("name", MULTI_SCALE_RULES)
def test_multi_scale_rules_give_identical_inputs_back(name):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (33, 40)).astype(np.uint8)
    grey_b = np.repeat(a[..., None], 3, axis=-1)
    np.testing.assert_array_equal(baselines.BASELINES[name](a, grey_b), grey_b)


def _with_chroma(y, b_colour):
    """The RGB image of luma y [H, W] and the chroma of the colour b_colour, as uint8."""
    chroma = color.rgb_to_ycrcb(np.asarray(b_colour, np.float64))[1:]
    return color.to_uint8(color.ycrcb_to_rgb(
        np.concatenate([y[..., None], np.broadcast_to(chroma, y.shape + (2,))], axis=-1)))


def test_multi_scale_rules_on_a_constant_b_and_a_textured_a():
    """A checkerboard A (mean 60, +-20: all its detail in the finest band, docs/metrics.md) and
    a constant coloured B: a brighter B (luma 124.2) gives Y = 124.2 + (A - 60) under both
    rules, B's base with A's detail; a darker B (luma 24.8) gives A back; the chroma is B's."""
    a = _checkerboard((16, 20), 60.0, 20.0)
    for b_colour, expected_y in (((200.0, 100.0, 50.0), 124.2 + a - 60.0),
                                 ((40.0, 20.0, 10.0), a)):
        b = np.broadcast_to(np.array(b_colour), a.shape + (3,))
        for name in MULTI_SCALE_RULES:
            np.testing.assert_allclose(baselines.LUMA_RULES[name](a, b), expected_y, rtol=0,
                                       atol=1e-9)
            np.testing.assert_array_equal(baselines.BASELINES[name](a, b),
                                          _with_chroma(expected_y, b_colour))


def test_laplacian_takes_the_larger_detail_and_max_low_a_detail_only_a_s():
    """A constant A (60) and a grey checkerboard B (120 +- 30): the Laplacian rule keeps B's
    larger detail on B's larger base (B itself); the maximum's low frequencies plus A's details
    give B's mean, 120, since A has no detail."""
    a = np.full((16, 16), 60.0)
    b_y = _checkerboard(a.shape, 120.0, 30.0)
    b = np.repeat(b_y[..., None], 3, axis=-1)
    np.testing.assert_allclose(baselines.LUMA_RULES["laplacian"](a, b), b_y, atol=1e-9)
    np.testing.assert_allclose(baselines.LUMA_RULES["max-low-a-detail"](a, b), 120.0, atol=1e-9)
    # and with an A of smaller detail (+-10) around the same mean as B, B's detail wins
    a = _checkerboard(a.shape, 120.0, -10.0)
    np.testing.assert_allclose(baselines.LUMA_RULES["laplacian"](a, b), b_y, atol=1e-9)


def test_summary_skips_undefined_values():
    per_pair = {"1.png": dict.fromkeys(metrics.METRIC_NAMES, 1.0),
                "2.png": dict.fromkeys(metrics.METRIC_NAMES, 3.0),
                "3.png": dict.fromkeys(metrics.METRIC_NAMES, None)}
    per_pair["3.png"]["EN"] = 5.0
    summary = scoring.summarise(per_pair)
    assert summary["CC"] == scoring.MetricSummary(mean=2.0, std=1.0, defined=2, undefined=1)
    assert summary["EN"].mean == 3.0 and summary["EN"].undefined == 0
    undefined = scoring.summarise({"1.png": dict.fromkeys(metrics.METRIC_NAMES, None)})
    assert undefined["SSIM"] == scoring.MetricSummary(None, None, 0, 1)
    assert "| m | undefined |" in scoring.markdown_table({"m": undefined}, "caption")


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def generated(tmp_path_factory, paper_config_path):
    """Generated pet pairs and two methods' fused folders: 'max' holds the maximum rule's
    images; 'flat' the average rule's, except pair 1, which is one constant grey."""
    root = tmp_path_factory.mktemp("evaluate")
    layout = layouts.layout_from_config(load_config(paper_config_path).data, "pet")
    generator.write_task(str(root / "data"), layout, NUM_PAIRS, SIZE, seed=3)
    pairs = layouts.list_pairs(str(root / "data"), layout)
    folders = {"max": root / "max", "flat": root / "flat"}
    for folder in folders.values():
        folder.mkdir()
    for pair in pairs:
        a, b = layouts.read_pair_uint8(pair, layout, SIZE)
        stem = os.path.splitext(pair.name)[0]
        flat = (np.full_like(b, 90) if pair.name == pairs[0].name
                else baselines.average_fusion(a, b))
        files.write_files([(str(folders["max"] / f"{stem}.png"), baselines.maximum_fusion(a, b)),
                            (str(folders["flat"] / f"{stem}.png"), flat)])
    return root, pairs, folders


def _evaluate(root, folders, out, extra=()):
    return cli.main(["evaluate", "--task", "pet", "--data", str(root / "data"),
                     *[f"--fused={name}={folder}" for name, folder in folders.items()],
                     "--out", str(out), *extra])


def _grey_of_file(path):
    """The file's rounded grey levels, computed here from the luma formula directly."""
    rgb = np.asarray(Image.open(path).convert("RGB"), np.float64)
    return np.round(rgb @ np.array([0.299, 0.587, 0.114]))


@pytest.fixture(scope="module")
def evaluated(generated, tmp_path_factory):
    root, pairs, folders = generated
    out = tmp_path_factory.mktemp("tables")
    assert _evaluate(root, folders, out, ["--baselines"]) == 0
    return out


def test_evaluate_writes_three_consistent_tables(generated, evaluated):
    root, pairs, folders = generated
    assert sorted(os.listdir(evaluated)) == ["evaluation.csv", "evaluation.json",
                                             "evaluation.md"]
    texts = {ext: (evaluated / f"evaluation.{ext}").read_text() for ext in ("md", "csv", "json")}
    # no NaN value anywhere (as a word: "a-luminance" holds the letters)
    assert not any(re.search(r"\bnan\b", text, re.IGNORECASE) for text in texts.values())
    report = json.loads(texts["json"])
    methods = ["max", "flat", *baselines.BASELINES]
    assert list(report["methods"]) == methods and report["pairs"] == NUM_PAIRS
    assert report["sizes"] == {pair.name: [SIZE, SIZE] for pair in pairs}
    assert f"{NUM_PAIRS} pairs of {SIZE} x {SIZE}, SSIM" in texts["md"]
    assert report["metrics"][:8] == ["EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM"]
    rows = list(csv.DictReader(texts["csv"].splitlines()))
    assert [row["method"] for row in rows] == methods
    markdown_rows = [line for line in texts["md"].splitlines() if line.startswith("| ")]
    assert markdown_rows[0].split(" | ")[1:9] == ["EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf",
                                                  "SSIM"]
    for method, row, line in zip(methods, rows, markdown_rows[1:]):
        for metric in metrics.METRIC_NAMES:
            values = [v[metric] for v in report["per_pair"][method].values()]
            defined = [v for v in values if v is not None]
            summary = report["methods"][method][metric]
            assert summary["mean"] == pytest.approx(np.mean(defined), rel=1e-12)
            assert summary["std"] == pytest.approx(np.std(defined), rel=1e-12, abs=1e-12)
            assert float(row[f"{metric}_mean"]) == summary["mean"]
            assert int(row[f"{metric}_undefined"]) == len(values) - len(defined)
        assert line.startswith(f"| {method} | {report['methods'][method]['EN']['mean']:.2f} ± ")


def test_fused_folder_scores_equal_direct_metrics(generated, evaluated):
    """A method's values are the metrics of its files against the sources; the folder of
    maximum-rule images scores exactly like the maximum baseline computed on the fly. The grey
    metrics see the files' grey levels, the colour fidelity their colours."""
    root, pairs, folders = generated
    report = json.loads((evaluated / "evaluation.json").read_text())
    for pair in pairs:
        fused = _grey_of_file(folders["max"] / pair.name)
        a = np.asarray(Image.open(pair.a).convert("L"), np.float64)
        b = _grey_of_file(pair.b)
        expected = metrics.all_metrics(fused, a, b)
        expected.update(metrics.colour_fidelity(
            np.asarray(Image.open(folders["max"] / pair.name).convert("RGB")), a,
            np.asarray(Image.open(pair.b).convert("RGB"))))
        got = report["per_pair"]["max"][pair.name]
        assert got == pytest.approx(expected, rel=1e-12)
        assert got == report["per_pair"]["maximum"][pair.name]


def test_constant_fused_image_is_undefined_not_nan(generated, evaluated):
    root, pairs, folders = generated
    report = json.loads((evaluated / "evaluation.json").read_text())
    first = report["per_pair"]["flat"][pairs[0].name]
    assert first["CC"] is None and first["EN"] == 0.0 and first["SD"] == 0.0
    cc = report["methods"]["flat"]["CC"]
    assert cc["undefined"] == 1 and cc["defined"] == NUM_PAIRS - 1
    others = [report["per_pair"]["flat"][pair.name]["CC"] for pair in pairs[1:]]
    assert cc["mean"] == pytest.approx(np.mean(others), rel=1e-12)
    assert math.isfinite(cc["std"])
    flat_row = next(line for line in (evaluated / "evaluation.md").read_text().splitlines()
                    if line.startswith("| flat |"))
    assert "(1 undef.)" in flat_row


def test_missing_fused_files_are_named(generated, tmp_path, capsys):
    root, pairs, folders = generated
    partial = tmp_path / "partial"
    shutil.copytree(folders["max"], partial)
    os.remove(partial / pairs[1].name)
    out = tmp_path / "out"
    assert _evaluate(root, {"max": folders["max"], "partial": partial}, out) == 2
    error = capsys.readouterr().err
    assert f"method 'partial': 1 of {NUM_PAIRS} fused images missing" in error
    assert pairs[1].name in error and "'max'" not in error
    assert not out.exists()


def test_bad_arguments_exit_2(generated, tmp_path, capsys):
    root, pairs, folders = generated
    assert cli.main(["evaluate", "--task", "pet", "--data", str(root / "data"),
                     "--fused", "no-equals-sign", "--out", str(tmp_path)]) == 2
    assert "expected NAME=DIR" in capsys.readouterr().err
    assert cli.main(["evaluate", "--task", "pet", "--data", str(root / "data"),
                     "--out", str(tmp_path)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    small = tmp_path / "small"
    shutil.copytree(folders["max"], small)
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).resize((SIZE // 2, SIZE // 2)).save(
        small / pairs[-1].name)
    assert _evaluate(root, {"max": folders["max"], "small": small}, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert f"{pairs[-1].name}: fused image is {SIZE // 2}x{SIZE // 2}, expected {SIZE}x{SIZE} " \
           f"like {folders['max'] / pairs[-1].name}" in error


def test_fused_images_of_any_size_are_scored_at_their_size(generated, paper_config_path,
                                                           tmp_path):
    """Each pair is scored at its fused image's size, square or not, the sources resized
    to it (here with PIL directly)."""
    root, pairs, _ = generated
    layout = layouts.layout_from_config(load_config(paper_config_path).data, "pet")
    sizes = dict(zip([pair.name for pair in pairs], [(SIZE, SIZE + 16), (SIZE + 8, SIZE),
                                                     (SIZE, SIZE)]))
    expected = {}
    for pair in pairs:
        height, width = sizes[pair.name]
        a = np.asarray(Image.open(pair.a).convert("L").resize((width, height), Image.BILINEAR))
        b = np.asarray(Image.open(pair.b).convert("RGB").resize((width, height), Image.BILINEAR))
        fused = baselines.maximum_fusion(a[..., None], b)
        files.write_files([(str(tmp_path / pair.name), fused)])
        expected[pair.name] = metrics.all_metrics(fused, a[..., None], b)
    scores, scored_sizes = scoring.score_pairs(pairs, layout, {"sized": str(tmp_path)},
                                               with_baselines=True)
    assert scored_sizes == sizes
    for pair in pairs:
        assert scores["sized"][pair.name] == pytest.approx(expected[pair.name], rel=1e-12)
        assert scores["maximum"][pair.name] == scores["sized"][pair.name]
    assert scoring.sizes_text(scored_sizes) == (
        f"{SIZE} x {SIZE}, {SIZE} x {SIZE + 16}, {SIZE + 8} x {SIZE}")
    # with the baselines alone, each pair is scored at its A image's size
    _, own_sizes = scoring.score_pairs(pairs, layout, {}, with_baselines=True)
    assert own_sizes == {pair.name: (SIZE, SIZE) for pair in pairs}


def test_rules_fuse_the_pairs_as_given_when_scored_against_other_pairs(paper_config_path,
                                                                       tmp_path):
    """With baseline_data, the rules fuse the pairs of that set (B misaligned, as a user has
    them) and are scored against the evaluated set's sources (the same pairs before the
    motion): per pair, the metrics of the rule's image of the given pair against the aligned
    pair, computed here with PIL and metrics.all_metrics, not those of the rule applied to the
    aligned pair (an oracle). A fused folder sets the size both are read at."""
    layout = layouts.layout_from_config(load_config(paper_config_path).data, "pet")
    roots = {"given": str(tmp_path / "given"), "aligned": str(tmp_path / "aligned")}
    for name, moved in (("given", True), ("aligned", False)):
        generator.write_task(roots[name], layout, NUM_PAIRS, SIZE, seed=4, misalign_b=moved,
                             motion="head")
    given, aligned = (layouts.list_pairs(roots[name], layout) for name in ("given", "aligned"))
    height, width = SIZE + 8, SIZE  # the fused images' size: the sources are resized to it

    def read(pair):
        a = np.asarray(Image.open(pair.a).convert("L").resize((width, height), Image.BILINEAR))
        b = np.asarray(Image.open(pair.b).convert("RGB").resize((width, height), Image.BILINEAR))
        return a[..., None], b

    fused = tmp_path / "fused"
    fused.mkdir()
    for pair in given:
        files.write_files([(str(fused / pair.name), baselines.average_fusion(*read(pair)))])
    out = tmp_path / "table"
    markdown, _ = scoring.evaluate_folders(roots["aligned"], layout, {"mean": str(fused)},
                                           str(out), with_baselines=True,
                                           baseline_data=roots["given"], show_progress=False)
    report = json.loads((out / "evaluation.json").read_text())
    assert list(report["methods"]) == ["mean", *baselines.BASELINES]
    assert report["baseline_data"] == roots["given"]
    assert f"the classical rules fuse the pairs under {roots['given']}" in markdown
    oracle_differs = False
    for given_pair, aligned_pair in zip(given, aligned):
        a_given, b_given = read(given_pair)
        a, b = read(aligned_pair)
        np.testing.assert_array_equal(a_given, a)  # the motion moves B only
        assert np.any(b_given != b)
        for name, rule in baselines.BASELINES.items():
            expected = metrics.all_metrics(rule(a_given, b_given), a, b)
            assert report["per_pair"][name][aligned_pair.name] == pytest.approx(expected,
                                                                                rel=1e-12)
            oracle = metrics.all_metrics(rule(a, b), a, b)
            oracle_differs |= expected["MI"] != pytest.approx(oracle["MI"], rel=1e-6)
        # the average rule's row equals the folder of its images of the given pairs
        assert (report["per_pair"]["average"][aligned_pair.name]
                == report["per_pair"]["mean"][aligned_pair.name])
    assert oracle_differs
    # against the given pairs themselves, baseline_data changes nothing
    plain, _ = scoring.score_pairs(given, layout, {"mean": str(fused)}, with_baselines=True)
    same, _ = scoring.score_pairs(given, layout, {"mean": str(fused)}, with_baselines=True,
                                  baseline_pairs=given)
    assert plain == same
    with pytest.raises(UserError, match="the pairs the rules fuse: 1 of 3 scored pairs missing"):
        scoring.score_pairs(aligned, layout, {}, with_baselines=True, baseline_pairs=given[:2])
