"""A shortened demo (one short epoch of training) writes every artefact, well-formed."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from difffccf_jax import demo

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
    rows = demo.registration_rows(_pairs(out), os.path.join(out, "fused"), SIZE)
    stem_errors = demo.registration_errors(rows)
    assert f"{stem_errors[0]:.3f} px before warping" in text
    assert f"{stem_errors[1]:.3f} px after warping" in text
    assert stem_errors[0] > 0  # the generated pairs are misaligned
    name, true, predicted, before, after = rows[0]
    assert (f"| {name} | {true[0]:+.2f}, {true[1]:+.2f} | {predicted[0]:+.2f}, "
            f"{predicted[1]:+.2f} | {before:.3f} | {after:.3f} |") in text
    for figure in os.listdir(os.path.join(out, "figures")):
        assert f"figures/{figure}" in text
    ssim_rows = re.findall(r"^\| ([\w-]+) \| (-?[\d.]+) \| ([\d.]+) \|$", text, re.MULTILINE)
    assert {row[0] for row in ssim_rows} >= {demo.METHOD, "average", "ycrcb-maximum"}


def test_colour_preserving_baseline_scores_as_expected(demo_run):
    out, _ = demo_run
    table = demo.fidelity_table(_pairs(out), _layout(), os.path.join(out, "fused"), SIZE)
    # Chroma taken from B keeps the colour (up to RGB saturation); averaging RGB with grey A
    # halves every chroma offset.
    assert table["average"][1] > 3 * table["ycrcb-average"][1]
    assert all(-1 <= ssim <= 1 for ssim, _ in table.values())
    assert table["maximum"][0] > table["average"][0] - 0.5


def _layout():
    from difffccf_jax.config_cli import load_config_file
    from difffccf_jax.data import layouts

    return layouts.layout_from_config(load_config_file(demo.TINY_CONFIG).data, "pet")


def _pairs(out):
    from difffccf_jax.data import layouts

    return layouts.list_pairs(os.path.join(out, "data", "test"), _layout())
