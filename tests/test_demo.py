"""A shortened demo (one short epoch of training) writes every artefact, well-formed."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from difffccf_jax import color
from difffccf_jax.tools import demo
from difffccf_jax.evaluation.metrics import PUBLISHED_METRICS as PUBLISHED

pytestmark = pytest.mark.slow  # whole training runs; see pytest.ini

SIZE, TEST_PAIRS = 32, 2


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo") / "out")
    report = demo.run_demo(out, task="pet", minutes=0.001, image_size=SIZE, train_pairs=8,
                           test_pairs=TEST_PAIRS, sampling_steps=6, seed=3,
                           motion_strength=4.0)
    return out, report


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
    assert os.path.isfile(os.path.join(checkpoint, "config.json"))
    assert any(name.isdigit() for name in os.listdir(checkpoint))
    assert report == os.path.join(out, "report.md")


def test_report_numbers_come_from_the_run(demo_run):
    out, report = demo_run
    with open(report, encoding="utf-8") as file:
        text = file.read()
    with open(os.path.join(out, "evaluation", "evaluation.json"), encoding="utf-8") as file:
        evaluation = json.load(file)
    en = evaluation["methods"][demo.METHOD]["EN"]["mean"]
    assert f"| {demo.METHOD} | {en:.2f} ±" in text
    registered = evaluation["methods"][demo.REGISTERED]["EN"]["mean"]
    assert f"| {demo.REGISTERED} | {registered:.2f} ±" in text
    rows = demo.registration_rows(_pairs(out), os.path.join(out, "fused_registered"), SIZE)
    stem_errors = demo.registration_errors(rows)
    assert f"{stem_errors[0]:.3f} px before warping" in text
    assert f"{stem_errors[1]:.3f} px after warping" in text
    assert stem_errors[0] > 0  # the generated pairs are misaligned
    name, true, predicted, before, after = rows[0]
    assert (f"| {name} | {true[0]:+.2f}, {true[1]:+.2f} | {predicted[0]:+.2f}, "
            f"{predicted[1]:+.2f} | {before:.3f} | {after:.3f} |") in text
    for figure in os.listdir(os.path.join(out, "figures")):
        assert f"figures/{figure}" in text
    # the field's metric table is the report's first table; the SSIM-vs-A table is gone
    sections = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert sections[:3] == ["Fusion metrics (held-out pairs)", "Does the Y fusion select?",
                            "Registration"]
    assert text.index("| method | EN | SD | SF | MI | SCD | VIF | Qabf | SSIM |") == text.index(
        "| ")
    assert "Anatomy and colour kept" not in text and "SSIM vs A" not in text
    assert f"| a-luminance | {evaluation['methods']['a-luminance']['EN']['mean']:.2f} ±" in text


def _read_grey(path):
    return np.asarray(Image.open(path), np.float64)


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
    rows = demo.registration_rows(_pairs(out), os.path.join(out, "fused_registered"), SIZE)
    before, after = demo.registration_errors(rows)
    assert summary["registration"]["before_px"] == pytest.approx(before)
    assert summary["registration"]["after_px"] == pytest.approx(after)
    assert summary["image_size"] == SIZE and summary["crop_size"] == 32


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
    monkeypatch.undo()
    with pytest.raises(UserError, match="--crop-size 40: expected 0"):
        demo.run_demo(str(tmp_path / "new"), image_size=32, crop_size=40)
    assert not os.path.exists(tmp_path / "new")  # refused before anything was written

    root = str(tmp_path / "data")
    config = demo.demo_config("pet", SIZE, 1.0, root, 8, 6, crop_size=16)
    assert config.data.image_size == SIZE and config.data.crop_size == 16
    from difffccf_jax.data import generator

    generator.write_task(root, _layout(), 4, SIZE, seed=0)
    run = train.setup_run(config, parallel.make_mesh())
    assert run.batches["pet"].crop_size == 16
    assert np.asarray(next(run.batches["pet"])["b"]).shape == (4, 16, 16, 3)


def _layout():
    from difffccf_jax.config_cli import load_config_file
    from difffccf_jax.data import layouts

    return layouts.layout_from_config(load_config_file(demo.TINY_CONFIG).data, "pet")


def _pairs(out):
    from difffccf_jax.data import layouts

    return layouts.list_pairs(os.path.join(out, "data", "test"), _layout())
