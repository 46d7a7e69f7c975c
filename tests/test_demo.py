"""A shortened demo (one short epoch of training) writes every artefact, well-formed, and its
report shows the run's numbers; the report and the baselines it compares with, on known
answers."""

import json
import math
import os
import re

import numpy as np
import pytest
from PIL import Image

from difffccf_jax import cli, color
from difffccf_jax.tools import demo, experiment
from difffccf_jax.evaluation.metrics import PUBLISHED_METRICS as PUBLISHED

SIZE, TEST_PAIRS = 32, 2
# The tiny model cut to two levels of one residual block: the demo's stages are what is
# tested, and this model compiles in half the time
SMALL = (("model.channel_mult", "(1, 2)"), ("model.num_res_blocks", "1"),
         ("model.deformation_features", "(8, 16)"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "out")
    report = demo.run_demo(out, task="pet", train_steps=2, image_size=SIZE, train_pairs=8,
                           test_pairs=TEST_PAIRS, sampling_steps=6, seed=3,
                           motion_strength=4.0, overrides=SMALL)
    return out, report


@pytest.mark.slow  # whole training runs; see pytest.ini
def test_every_artefact_exists_and_is_well_formed(demo_run):
    out, report = demo_run
    fused = sorted(n for n in os.listdir(os.path.join(out, "fused")) if n.endswith(".png"))
    assert fused == [f"{i}.png" for i in range(1, TEST_PAIRS + 1)]
    for name in fused:
        image = np.asarray(Image.open(os.path.join(out, "fused", name)))
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    figures = sorted(os.listdir(os.path.join(out, "figures")))
    assert figures == [f"pair_{i}.png" for i in range(1, TEST_PAIRS + 1)]
    for name in figures + ["../training_curves.png"]:
        width, height = Image.open(os.path.join(out, "figures", name)).size
        assert width > 300 and height > 200
    for ext in ("md", "csv", "json"):
        assert os.path.getsize(os.path.join(out, "evaluation", f"evaluation.{ext}")) > 0
    checkpoint = os.path.join(out, "training", "checkpoints")
    with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as file:
        model = json.load(file)["model"]
    assert (model["channel_mult"], model["num_res_blocks"]) == ([1, 2], 1)  # the overrides
    assert any(name.isdigit() for name in os.listdir(checkpoint))
    assert report == os.path.join(out, "report.md")
    with open(report, encoding="utf-8") as file:
        assert ("The configuration tiny.py (with model.channel_mult=(1, 2), "
                "model.num_res_blocks=1, model.deformation_features=(8, 16)) trained"
                in " ".join(file.read().split()))


def _grey_levels(path):
    """The rounded grey levels of an image file: 0.299 R + 0.587 G + 0.114 B (docs/metrics.md)."""
    rgb = np.asarray(Image.open(path).convert("RGB"), np.float64)
    return np.round(rgb @ np.array([0.299, 0.587, 0.114]))


def _entropy_bits(levels):
    _, counts = np.unique(levels, return_counts=True)
    p = counts / levels.size
    return float(-np.sum(p * np.log2(p)))


def _table_mean(text, method, metric="EN"):
    """The mean printed in `method`'s row of the report's metric table."""
    header = re.search(r"^\| method \|(.*)\|$", text, re.MULTILINE).group(1)
    column = [name.strip() for name in header.split("|")].index(metric)
    row = re.search(rf"^\| {re.escape(method)} \|(.*)\|$", text, re.MULTILINE).group(1)
    return float(row.split("|")[column].split("±")[0])


@pytest.mark.slow  # whole training runs; see pytest.ini
def test_report_numbers_come_from_the_run(demo_run):
    """The report's numbers, recomputed here with NumPy from the run's files: EN of the fused
    images, and the registration errors from the true fields and the predicted deformations."""
    out, report = demo_run
    with open(report, encoding="utf-8") as file:
        text = file.read()
    with open(os.path.join(out, "evaluation", "evaluation.md"), encoding="utf-8") as file:
        assert file.read().strip() in text  # the evaluation's table, as written
    pairs = _pairs(out)
    assert len(pairs) == TEST_PAIRS
    stems = [os.path.splitext(pair.name)[0] for pair in pairs]
    for method, folder in ((demo.METHOD, "fused"), (demo.REGISTERED, "fused_registered")):
        en = np.mean([_entropy_bits(_grey_levels(os.path.join(out, folder, f"{stem}.png")))
                      for stem in stems])
        assert abs(_table_mean(text, method) - en) <= 0.005 + 1e-9, method  # printed to 2 places

    true = [np.load(pair.displacement).astype(np.float64) for pair in pairs]
    predicted = [np.load(os.path.join(out, "fused_registered", "extras", stem,
                                      "deformation.npy")).astype(np.float64) for stem in stems]
    before = [np.mean(np.hypot(field[..., 0], field[..., 1])) for field in true]
    after = [np.mean(np.hypot(*np.moveaxis(field - guess, -1, 0)))
             for field, guess in zip(true, predicted)]
    assert np.mean(before) > 0.5  # the generated pairs are misaligned
    printed = re.search(r"([\d.]+) px before warping, ([\d.]+) px after warping",
                        " ".join(text.split()))
    assert abs(float(printed.group(1)) - np.mean(before)) <= 5e-4 + 1e-9
    assert abs(float(printed.group(2)) - np.mean(after)) <= 5e-4 + 1e-9
    for pair, field, guess, pair_before, pair_after in zip(pairs, true, predicted, before, after):
        row = re.search(rf"^\| {re.escape(pair.name)} \| (.*) \|$", text, re.MULTILINE)
        cells = [[float(v) for v in cell.split(",")] for cell in row.group(1).split(" | ")]
        np.testing.assert_allclose(cells[0], field.mean(axis=(0, 1)), atol=0.005 + 1e-9)
        np.testing.assert_allclose(cells[1], guess.mean(axis=(0, 1)), atol=0.005 + 1e-9)
        np.testing.assert_allclose(cells[2:], [[pair_before], [pair_after]], atol=5e-4 + 1e-9)
    for figure in os.listdir(os.path.join(out, "figures")):
        assert f"figures/{figure}" in text
    # the field's metric table is the report's first table; the SSIM-vs-A table is gone
    sections = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert sections[:4] == ["Fusion metrics (held-out pairs)", "Denoising",
                            "Does the Y fusion select?", "Registration"]
    assert text.index("| method | EN | SD | SF | MI | SCD | VIF | Qabf | SSIM |") == text.index(
        "| ")
    assert "Anatomy and colour kept" not in text and "SSIM vs A" not in text


def test_report_shows_the_numbers_it_is_given(tmp_path):
    """write_report with chosen numbers: each appears in the report as printed by hand here."""
    figure = tmp_path / "figures" / "pair_1.png"
    info = dict(
        command="difffccf demo --out X", config="tiny.py", task="pet", anatomy="template",
        train_pairs=8,
        test_pairs=2,
        image_size=32, crop_size=16, train_steps=123, train_minutes=1.5, final_loss=0.03125,
        sampling_steps=6, diffusion_steps=50,
        stage_seconds={"data": 1.2, "train": 90.0, "fuse": 30.6},
        metrics_table="| method | EN |\n|---|---|\n| diff-fccf | 9.87 ± 0.01 |\n",
        sentence="A chosen sentence.",
        denoising_table="| method | PSNR (dB) |\n|---|---|\n| diff-fccf | 41.25 ± 0.50 |\n",
        selection=dict(bright_fraction=0.25, m1_inside_bright=0.125, m1_outside_bright=0.875,
                       y_deviation_from_max={"diff-fccf": 3.14159, "a-luminance": 12.5,
                                             "ycrcb-maximum": 0.0}),
        registration=[
            experiment.RegistrationRow("1.png", np.array([1.5, -2.25]), np.array([0.5, -1.0]),
                                       2.0, 1.0),
            experiment.RegistrationRow("2.png", np.array([-0.5, 0.75]), np.array([0.0, 0.25]),
                                       3.0, 0.5)],
        figures=[str(figure)], checkpoint=str(tmp_path / "training" / "checkpoints"))
    path = str(tmp_path / "report.md")
    text = demo.write_report(path, info)
    with open(path, encoding="utf-8") as file:
        assert file.read() == text
    flat = " ".join(text.split())
    assert "Command: `difffccf demo --out X`" in text
    assert "8 generated training pairs and 2 held-out pairs of 32 x 32 (template anatomy" in flat
    assert "on random 16 x 16 crops of the training pairs" in flat
    assert "123 steps (1.5 min, final total loss 0.03125)" in flat
    assert "with 6 respaced steps (of 50)" in flat
    assert "Stage times (s): data 1, train 90, fuse 31." in flat
    assert info["metrics_table"] in text and "A chosen sentence." in text
    assert "## Denoising" in text and info["denoising_table"] in text
    assert "here 25.0% of the pixels" in flat
    assert "| 0.125 | 0.875 |" in text
    for row in ("| diff-fccf | 3.14 |", "| a-luminance | 12.50 |", "| ycrcb-maximum | 0.00 |"):
        assert row in text
    assert "2.500 px before warping, 0.750 px after warping" in flat  # (2 + 3) / 2, (1 + 0.5) / 2
    assert "| 1.png | +1.50, -2.25 | +0.50, -1.00 | 2.000 | 1.000 |" in text
    assert "| 2.png | -0.50, +0.75 | +0.00, +0.25 | 3.000 | 0.500 |" in text
    # the same table and records as the registration check's (tools/experiment.py)
    assert experiment.registration_table(info["registration"]) in text
    assert experiment.registration_records(info["registration"])[1] == dict(
        pair="2.png", true_mean_shift=[-0.5, 0.75], predicted_mean_shift=[0.0, 0.25],
        before_px=3.0, after_px=0.5)
    assert "![pair](figures/pair_1.png)" in text
    assert "Checkpoint: `training/checkpoints`" in text


SSIM_C1, SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2  # K1, K2 = 0.01, 0.03; data range 255


def _ssim_against_black(levels):
    """SSIM(G, 0) as docs/metrics.md defines SSIM (7 x 7 uniform windows over the valid
    interior, sample variances): a black image has mean, variance and covariance 0 in every
    window, so each window gives C1 C2 / ((mean^2 + C1) (variance + C2))."""
    windows = np.lib.stride_tricks.sliding_window_view(levels, (7, 7))
    mean, variance = windows.mean(axis=(-2, -1)), windows.var(axis=(-2, -1), ddof=1)
    return float(np.mean(SSIM_C1 * SSIM_C2 / ((mean ** 2 + SSIM_C1) * (variance + SSIM_C2))))


def test_baselines_score_their_known_answers(tmp_path):
    """The classical rules the demo compares with, scored by `difffccf evaluate --baselines` (the
    demo's evaluation), on two pairs whose fusion is known:
    pair 1, A black: the colour-preserving maximum rule (Y = max(A, Y_B) = Y_B, Cr and Cb of B)
    and the RGB maximum return B itself, so SSIM = SSIM(B, A) + SSIM(B, B) = SSIM(B, 0) + 1,
    MI = 0 + H(B) = EN ln 2 (nats, bits), MSE = (mean B^2 + 0) / 2 and SD = std B;
    pair 2, B a grey copy of A: every rule returns A, so SSIM = 2, MSE = 0, CC = 1 and
    MI = 2 EN ln 2."""
    from difffccf_jax.data import generator, layouts
    from difffccf_jax.evaluation import baselines

    root = str(tmp_path / "data")
    layout = _layout()
    generator.write_task(root, layout, 2, SIZE, seed=5)
    black_a, grey_b = layouts.list_pairs(root, layout)
    a_levels = np.asarray(Image.open(black_a.a), np.uint8)
    Image.fromarray(np.zeros_like(a_levels)).save(black_a.a)
    a_grey = np.asarray(Image.open(grey_b.a), np.uint8)
    Image.fromarray(np.repeat(a_grey[..., None], 3, axis=-1)).save(grey_b.b)
    assert cli.main(["evaluate", "--task", "pet", "--data", root, "--baselines",
                     "--out", str(tmp_path / "tables")]) == 0
    with open(tmp_path / "tables" / "evaluation.json", encoding="utf-8") as file:
        per_pair = json.load(file)["per_pair"]
    assert set(per_pair) == set(baselines.BASELINES)

    b = _grey_levels(black_a.b)
    assert b.std() > 10  # a real image, not a constant
    for method in ("ycrcb-maximum", "maximum"):
        scores = per_pair[method][black_a.name]
        assert scores["EN"] == pytest.approx(_entropy_bits(b), rel=1e-12)
        assert scores["SD"] == pytest.approx(b.std(), rel=1e-12)
        assert scores["SSIM"] == pytest.approx(1 + _ssim_against_black(b), rel=1e-9)
        assert scores["MI"] == pytest.approx(math.log(2) * scores["EN"], rel=1e-9)
        assert scores["MSE"] == pytest.approx(np.mean(b ** 2) / 2, rel=1e-12)

    a = a_grey.astype(np.float64)
    assert a.std() > 10
    for method, scores in per_pair.items():
        scores = scores[grey_b.name]
        assert scores["EN"] == pytest.approx(_entropy_bits(a), rel=1e-12), method
        assert scores["SSIM"] == pytest.approx(2.0, abs=1e-12), method
        assert scores["MSE"] == 0.0 and scores["CC"] == pytest.approx(1.0, abs=1e-12), method
        assert scores["MI"] == pytest.approx(2 * math.log(2) * scores["EN"], rel=1e-9), method


def _read_grey(path):
    return np.asarray(Image.open(path), np.float64)


@pytest.mark.slow  # whole training runs; see pytest.ini
def test_selection_statistics_equal_a_recomputation_from_the_extras(demo_run):
    out, report = demo_run
    inside, outside, deviation = [], [], {"diff-fccf": [], "a-luminance": [], "ycrcb-maximum": []}
    for pair in _pairs(out):
        extras = os.path.join(out, "fused", "extras", os.path.splitext(pair.name)[0])
        a = _read_grey(pair.a)
        rgb = np.asarray(Image.open(os.path.join(extras, "warped_b.png")), np.float64)
        b_y = color.rgb_to_grey(rgb)[..., 0]  # 0.299 R + 0.587 G + 0.114 B
        m1 = _read_grey(os.path.join(extras, "mask_m1_y.png")) / 255
        f_y = _read_grey(os.path.join(extras, "fused_y.png"))
        assert a.shape == b_y.shape == m1.shape == f_y.shape == (SIZE, SIZE)
        bright, best = b_y > a, np.maximum(a, b_y)
        inside.append(m1[bright])
        outside.append(m1[~bright])
        deviation["diff-fccf"].append(np.abs(f_y - best))
        deviation["a-luminance"].append(best - a)
        deviation["ycrcb-maximum"].append(np.zeros_like(a))
    inside, outside = np.concatenate(inside), np.concatenate(outside)
    assert inside.size and outside.size  # the generated B has a bright region, and a rest
    expected = {name: np.mean([np.mean(v) for v in values])  # pairs have equal pixel counts
                for name, values in deviation.items()}
    assert expected["a-luminance"] > 1  # copying A is far from selecting the brighter source

    with open(os.path.join(out, demo.SUMMARY_NAME), encoding="utf-8") as file:
        selection = json.load(file)["selection"]
    assert selection["m1_inside_bright"] == pytest.approx(np.mean(inside), abs=1e-12)
    assert selection["m1_outside_bright"] == pytest.approx(np.mean(outside), abs=1e-12)
    assert selection["bright_fraction"] == pytest.approx(
        inside.size / (inside.size + outside.size), abs=1e-12)
    assert list(selection["y_deviation_from_max"]) == list(expected)
    for name, value in expected.items():
        assert selection["y_deviation_from_max"][name] == pytest.approx(value, abs=1e-9)
    assert selection["y_deviation_from_max"]["ycrcb-maximum"] == 0
    with open(report, encoding="utf-8") as file:
        text = file.read()
    assert f"| {np.mean(inside):.3f} | {np.mean(outside):.3f} |" in text
    for name, value in expected.items():
        assert f"| {name} | {value:.2f} |" in text


def _verdicts(part):
    """{'ahead': [metrics], ...} parsed from one half of the report's comparison sentence."""
    found = re.findall(r"(ahead|level|behind|undefined) on (\d+)(?: \(([\w, ]+)\))?", part)
    verdicts = {key: names.split(", ") if names else [] for key, _, names in found}
    assert all(int(count) == len(verdicts[key]) for key, count, _ in found)
    return verdicts


@pytest.mark.slow  # whole training runs; see pytest.ini
def test_comparison_sentence_agrees_with_the_table(demo_run):
    out, report = demo_run
    with open(os.path.join(out, "evaluation", "evaluation.json"), encoding="utf-8") as file:
        methods = json.load(file)["methods"]
    with open(os.path.join(out, demo.SUMMARY_NAME), encoding="utf-8") as file:
        summary = json.load(file)
    with open(report, encoding="utf-8") as file:
        text = file.read()
    assert summary["sentence"] in text
    halves = summary["sentence"].split("against the ycrcb-maximum rule")
    assert len(halves) == 2 and "against the best baseline" in halves[0]
    printed = {method: {metric: None if methods[method][metric]["mean"] is None
                        else float(f"{methods[method][metric]['mean']:.2f}")
                        for metric in PUBLISHED} for method in methods}
    baselines = [name for name in methods if name not in (demo.METHOD, demo.REGISTERED)]
    assert "a-luminance" in baselines and "ycrcb-maximum" in baselines
    for half, rivals in zip(halves, (baselines, ["ycrcb-maximum"])):
        expected = {"ahead": [], "level": [], "behind": [], "undefined": []}
        for metric in PUBLISHED:
            ours = printed[demo.METHOD][metric]
            theirs = [printed[name][metric] for name in rivals
                      if printed[name][metric] is not None]
            if ours is None or not theirs:  # VIF at 32 px (metrics.VIF_MIN_SIZE)
                expected["undefined"].append(metric)
                continue
            best = max(theirs)
            expected["ahead" if ours > best else "behind" if ours < best else "level"].append(
                metric)
        assert len(expected["undefined"]) < 4  # most metrics are compared
        verdicts = _verdicts(half)
        assert {key: verdicts.get(key, []) for key in expected} == expected
    # summary.json quotes evaluation.json's means for every method and the registration errors
    assert summary["metrics"] == {method: {metric: value["mean"] for metric, value in
                                           methods[method].items()} for method in methods}
    rows = experiment.registration_rows(_pairs(out), os.path.join(out, "fused_registered"), SIZE)
    before, after = experiment.registration_errors(rows)
    assert summary["registration"]["before_px"] == pytest.approx(before)
    assert summary["registration"]["after_px"] == pytest.approx(after)
    assert summary["image_size"] == SIZE and summary["crop_size"] == 32
    assert summary["config"].startswith("tiny.py (with model.channel_mult=(1, 2), ")


def test_compare_counts_ties_at_the_printed_precision():
    means = {demo.METHOD: dict(EN=5.004, SD=40.0, SF=None, MI=1.0, SCD=0.5, VIF=0.4, Qabf=0.3,
                               SSIM=1.2),
             "x": dict(EN=5.001, SD=30.0, SF=7.0, MI=2.0, SCD=0.1, VIF=None, Qabf=0.6, SSIM=1.3),
             "y": dict(EN=4.0, SD=45.0, SF=8.0, MI=0.5, SCD=0.7, VIF=None, Qabf=0.2, SSIM=1.1)}
    verdict = demo.compare(means, demo.METHOD, ["x", "y"])
    assert verdict["ahead"] == [] and verdict["level"] == ["EN"]
    assert verdict["behind"] == ["SD", "MI", "SCD", "Qabf", "SSIM"]
    assert verdict["undefined"] == ["SF", "VIF"]
    assert verdict["best"] == dict(EN="x", SD="y", MI="x", SCD="y", Qabf="x", SSIM="x")
    against_y = demo.compare(means, demo.METHOD, ["y"])
    assert against_y["ahead"] == ["EN", "MI", "Qabf", "SSIM"]
    sentence = demo.comparison_sentence({"best_baseline": verdict, "ycrcb-maximum": against_y})
    first, second = sentence.split("against the ycrcb-maximum rule")
    assert _verdicts(first) == dict(ahead=[], level=["EN"], behind=verdict["behind"],
                                    undefined=["SF", "VIF"])
    assert _verdicts(second)["ahead"] == ["EN", "MI", "Qabf", "SSIM"]


def test_crop_and_image_size_reach_the_training_config(monkeypatch, tmp_path):
    from difffccf_jax import cli, parallel
    from difffccf_jax.training import train
    from difffccf_jax.errors import UserError

    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda out, **kwargs: calls.append(kwargs))
    assert cli.main(["demo", "--out", str(tmp_path), "--image-size", "96",
                     "--crop-size", "48"]) == 0
    assert calls[0]["image_size"] == 96 and calls[0]["crop_size"] == 48
    assert calls[0]["train_steps"] == demo.TRAIN_STEPS
    assert calls[0]["config_spec"] == demo.TINY_CONFIG and calls[0]["overrides"] == []
    assert cli.main(["demo", "--out", str(tmp_path), "--config", "configs/paper.py",
                     "--config.model.num_res_blocks=1", "--config.train.max_minutes=2"]) == 0
    assert calls[1]["config_spec"] == "configs/paper.py"
    assert calls[1]["overrides"] == [("model.num_res_blocks", "1"), ("train.max_minutes", "2")]
    monkeypatch.undo()
    with pytest.raises(UserError, match="--crop-size 40: expected 0"):
        demo.run_demo(str(tmp_path / "new"), image_size=32, crop_size=40)
    assert not os.path.exists(tmp_path / "new")  # refused before anything was written

    root = str(tmp_path / "data")
    config = experiment.training_config("pet", SIZE, 5, root, 8, 6, crop_size=16)
    assert config.data.image_size == SIZE and config.data.crop_size == 16
    # a step count, not a time budget: 5 steps of 2 per epoch (8 pairs, batch 4) are 3 epochs
    assert (config.train.steps_per_epoch, config.train.epochs) == (2, 3)
    assert config.train.max_minutes == 0 and not config.train.fast_compile
    # overrides come after the demo's own settings, so they win over them
    overridden = experiment.training_config("pet", SIZE, 5, root, 8, 6, crop_size=16, overrides=(
        ("train.epochs", "7"), ("model.num_res_blocks", "1")))
    assert (overridden.train.epochs, overridden.model.num_res_blocks) == (7, 1)
    from difffccf_jax.data import generator

    generator.write_task(root, _layout(), 4, SIZE, seed=0)
    run = train.setup_run(config, parallel.make_mesh())
    assert run.batches["pet"].crop_size == 16
    assert np.asarray(next(run.batches["pet"])["b"]).shape == (4, 16, 16, 3)


def _layout():
    return experiment.task_layout("pet")


def _pairs(out):
    from difffccf_jax.data import layouts

    return layouts.list_pairs(os.path.join(out, "data", "test"), _layout())
