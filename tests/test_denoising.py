"""Denoising, measured (evaluation/denoising.py and `difffccf evaluate-denoising`): known
answers on hand-made twins, and a smoothing method judged a denoiser on generated twins."""

import json
import os
import shutil

import numpy as np
import pytest
from scipy import ndimage

from difffccf_jax import cli, files
from difffccf_jax.config_cli import load_config
from difffccf_jax.data import layouts
from difffccf_jax.evaluation import baselines, denoising, metrics

SIZE = 48
NUM_PAIRS = 3


def numpy_psnr(difference):
    """PSNR in dB of an image differing from its reference by `difference`, peak 255."""
    return 10 * np.log10(255.0 ** 2 / np.mean(np.asarray(difference, np.float64) ** 2))


@pytest.fixture(scope="module")
def pet_layout(paper_config_path):
    return layouts.layout_from_config(load_config(paper_config_path).data, "pet")


# ---------------------------------------------------------------- the comparison


def test_identical_images_score_the_cap_and_ssim_one():
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)
    assert denoising.compare(image, image.copy()) == dict(PSNR=denoising.PSNR_CAP_DB, SSIM=1.0)


def test_psnr_is_against_the_8_bit_peak_and_capped():
    rng = np.random.default_rng(1)
    clean = rng.integers(20, 236, (SIZE, SIZE)).astype(np.float64)
    offset = rng.integers(-20, 21, (SIZE, SIZE))
    scores = denoising.compare(clean + offset, clean)
    assert scores["PSNR"] == pytest.approx(numpy_psnr(offset), rel=1e-12)
    # not the fusion PSNR's max(F) peak: a noisy image's maximum moves with its noise
    assert scores["PSNR"] != pytest.approx(
        metrics.peak_signal_to_noise_ratio(clean + offset, clean, clean))
    # one level on one pixel of a 512 x 512 image is 102.3 dB: above the cap
    large = np.zeros((512, 512))
    nudged = large.copy()
    nudged[7, 9] = 1
    assert numpy_psnr(nudged) > denoising.PSNR_CAP_DB
    assert denoising.compare(nudged, large)["PSNR"] == denoising.PSNR_CAP_DB
    # SSIM is the evaluation SSIM of the two grey images, symmetric
    assert scores["SSIM"] == metrics.ssim_pair(clean + offset, clean)
    assert scores["SSIM"] == pytest.approx(denoising.compare(clean, clean + offset)["SSIM"])
    assert scores["SSIM"] < 1


def test_compare_refuses_images_of_different_or_tiny_size():
    with pytest.raises(ValueError, match="differ in size"):
        denoising.compare(np.zeros((SIZE, SIZE)), np.zeros((SIZE, SIZE + 1)))
    with pytest.raises(ValueError, match="smaller than SSIM"):
        denoising.compare(np.zeros((5, 5)), np.zeros((5, 5)))


# ---------------------------------------------------------------- known answers on files


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory, pet_layout):
    """Twins built by hand: A of even grey levels and a grey B (no chroma); the noisy A is A
    plus even integer noise n, the noisy B is B. Method 'copy' has identical fused folders for
    both sets; method 'noisy-a' fuses each pair into its A (its noise passes whole)."""
    root = tmp_path_factory.mktemp("hand_made")
    rng = np.random.default_rng(2)
    folder = pet_layout.folder
    truth = {}
    for index in range(NUM_PAIRS):
        name = f"{index + 1}.png"
        a = 2 * rng.integers(20, 100, (SIZE, SIZE))
        b = 2 * rng.integers(0, 120, (SIZE, SIZE))
        noise = 2 * rng.integers(-10, 11, (SIZE, SIZE))
        truth[name] = (a, b, noise)
        outputs = []
        for data, a_image in (("noisy", a + noise), ("clean", a)):
            base = root / data / folder
            outputs += [(str(base / pet_layout.b / name), b.astype(np.uint8)),
                        (str(base / pet_layout.a / name), a_image.astype(np.uint8))]
        fused = np.repeat(a[..., None], 3, axis=-1).astype(np.uint8)
        outputs += [(str(root / "copy" / name), fused), (str(root / "copy-too" / name), fused),
                    (str(root / "a-noisy" / name), (a + noise).astype(np.uint8)),
                    (str(root / "a-clean" / name), a.astype(np.uint8))]
        for path, _ in outputs:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        files.write_files(outputs)
    return root, truth


def _run(root, out, fused, extra=("--baselines",), clean="clean"):
    return cli.main(["evaluate-denoising", "--task", "pet", "--data", str(root / "noisy"),
                     "--clean-data", str(root / clean),
                     *[f"--fused={name}={noisy}:{clean_dir}"
                       for name, (noisy, clean_dir) in fused.items()],
                     "--out", str(out), *extra])


@pytest.fixture(scope="module")
def hand_made_report(hand_made, tmp_path_factory):
    root, _ = hand_made
    out = tmp_path_factory.mktemp("hand_made_tables")
    assert _run(root, out, {"copy": (root / "copy", root / "copy-too"),
                            "noisy-a": (root / "a-noisy", root / "a-clean")}) == 0
    return json.loads((out / "denoising.json").read_text()), (out / "denoising.md").read_text()


def test_rules_transfer_noise_as_their_closed_forms(hand_made, hand_made_report):
    """average(A + n, B) - average(A, B) = n / 2; a-luminance with a grey B and the input A
    pass n whole; maximum passes n where A + n or A wins over B; B has no noise."""
    _, truth = hand_made
    report, _ = hand_made_report
    per_pair = report["per_pair"]
    for name, (a, b, noise) in truth.items():
        assert per_pair["average"][name]["PSNR"] == pytest.approx(numpy_psnr(noise / 2),
                                                                  rel=1e-12)
        for row in ("a-luminance", "input A", "noisy-a"):
            assert per_pair[row][name]["PSNR"] == pytest.approx(numpy_psnr(noise), rel=1e-12)
        maximum_difference = np.maximum(a + noise, b) - np.maximum(a, b)
        assert per_pair["maximum"][name]["PSNR"] == pytest.approx(
            numpy_psnr(maximum_difference), rel=1e-12)
        assert per_pair["average"][name]["SSIM"] == pytest.approx(
            metrics.ssim_pair((a + noise + b) / 2, (a + b) / 2), rel=1e-12)
        assert per_pair["input B"][name] == dict(PSNR=denoising.PSNR_CAP_DB, SSIM=1.0)
        # halving the noise gains 20 log10(2) = 6.02 dB
        assert (per_pair["average"][name]["PSNR"] - per_pair["input A"][name]["PSNR"]
                == pytest.approx(20 * np.log10(2), rel=1e-9))


def test_identical_fused_folders_score_the_cap_and_denoise(hand_made_report):
    report, markdown = hand_made_report
    copy = report["methods"]["copy"]
    assert copy["PSNR"] == dict(mean=denoising.PSNR_CAP_DB, std=0.0, defined=NUM_PAIRS,
                                undefined=0)
    assert copy["SSIM"]["mean"] == 1.0 and copy["SSIM"]["std"] == 0.0
    assert report["verdicts"]["copy"].startswith("copy denoises:")
    assert f"beats every rule's on {NUM_PAIRS} of {NUM_PAIRS} pairs" in report["verdicts"]["copy"]
    # passing A's noise whole loses to the average rule, which halves it
    assert report["verdicts"]["noisy-a"].startswith("noisy-a does not denoise:")
    assert "closest rule (average" in report["verdicts"]["noisy-a"]
    assert f"- {report['verdicts']['copy']}" in markdown


def test_tables_hold_the_means_of_the_pairs(hand_made_report):
    report, markdown = hand_made_report
    rows = ["copy", "noisy-a", *baselines.BASELINES, *denoising.INPUT_ROWS]
    assert list(report["methods"]) == rows and report["pairs"] == NUM_PAIRS
    assert report["sizes"] == {f"{i + 1}.png": [SIZE, SIZE] for i in range(NUM_PAIRS)}
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert lines[0] == "| method | PSNR (dB) | SSIM |" and len(lines) == 1 + len(rows)
    for row, line in zip(rows, lines[1:]):
        for metric in denoising.METRICS:
            values = [scores[metric] for scores in report["per_pair"][row].values()]
            summary = report["methods"][row][metric]
            assert summary["mean"] == pytest.approx(np.mean(values), rel=1e-12)
            assert summary["std"] == pytest.approx(np.std(values), rel=1e-12, abs=1e-12)
        psnr = report["methods"][row]["PSNR"]
        assert line.startswith(f"| {row} | {psnr['mean']:.2f} ± {psnr['std']:.2f} | ")


# ---------------------------------------------------------------- generated twins


def _write_fused(folder, image_pairs, fuse):
    os.makedirs(folder, exist_ok=True)
    files.write_files([(os.path.join(folder, name), fuse(a, b))
                       for name, (a, b) in image_pairs.items()])


def smoothed_average(a, b):
    """A crude denoiser: the average rule, then a Gaussian blur of 1.5 pixels."""
    fused = baselines.average_fusion(a, b).astype(np.float64)
    return np.round(ndimage.gaussian_filter(fused, (1.5, 1.5, 0))).astype(np.uint8)


def sharpened_average(a, b):
    """A noise amplifier: the average rule plus its own high frequencies."""
    fused = baselines.average_fusion(a, b).astype(np.float64)
    sharp = 2 * fused - ndimage.gaussian_filter(fused, (1.0, 1.0, 0))
    return np.clip(np.round(sharp), 0, 255).astype(np.uint8)


def test_smoothing_is_judged_a_denoiser_on_generated_twins(tmp_path, pet_layout, capsys):
    """make-data --clean-twins, then evaluate-denoising: a blur after the average rule comes
    closer to its clean-pair fusion than every rule; sharpening does not."""
    noisy_root, clean_root = tmp_path / "noisy", tmp_path / "clean"
    assert cli.main(["make-data", "--task", "pet", "--num", "2", "--size", str(SIZE),
                     "--seed", "8", "--anatomy", "phantom", "--out", str(noisy_root),
                     "--clean-twins", str(clean_root)]) == 0
    sources = {root: {pair.name: layouts.read_pair_uint8(pair, pet_layout)
                      for pair in layouts.list_pairs(str(root), pet_layout)}
               for root in (noisy_root, clean_root)}
    fused = {}
    for method, fuse in (("smooth", smoothed_average), ("sharp", sharpened_average)):
        for root, twin in ((noisy_root, "noisy"), (clean_root, "clean")):
            _write_fused(tmp_path / f"{method}-{twin}", sources[root], fuse)
        fused[method] = (tmp_path / f"{method}-noisy", tmp_path / f"{method}-clean")
    capsys.readouterr()
    assert _run(tmp_path, tmp_path / "tables", fused) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "tables" / "denoising.json").read_text())
    assert report["verdicts"]["smooth"].startswith("smooth denoises:")
    assert report["verdicts"]["sharp"].startswith("sharp does not denoise:")
    assert report["verdicts"]["smooth"] in printed and "denoising.json" in printed
    for row in ("input A", "input B", *baselines.BASELINES):  # the generated noise is there
        assert 15 < report["methods"][row]["PSNR"]["mean"] < 60, row
        assert report["methods"][row]["SSIM"]["mean"] < 1
    # the library function the command calls gives the same numbers
    markdown, _ = denoising.evaluate_denoising(str(noisy_root), str(clean_root), pet_layout,
                                               {"smooth": fused["smooth"]},
                                               str(tmp_path / "again"), show_progress=False)
    again = json.loads((tmp_path / "again" / "denoising.json").read_text())
    assert again["per_pair"]["smooth"] == report["per_pair"]["smooth"]
    assert "no classical rule to compare with (add --baselines)" in markdown


# ---------------------------------------------------------------- bad input


def test_bad_arguments_exit_2_with_one_line(hand_made, tmp_path, capsys):
    root, truth = hand_made
    copy = {"copy": (root / "copy", root / "copy-too")}

    def error_of(status):
        assert status == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1, error
        return error

    assert "expected NAME=NOISY_DIR:CLEAN_DIR" in error_of(cli.main(
        ["evaluate-denoising", "--task", "pet", "--data", str(root / "noisy"), "--clean-data",
         str(root / "clean"), "--fused", f"copy={root / 'copy'}", "--out", str(tmp_path)]))
    assert "nothing to evaluate" in error_of(_run(root, tmp_path / "out", {}, extra=()))
    assert "expected the clean twins' data root" in error_of(
        _run(root, tmp_path / "out", copy, clean="noisy"))
    assert "method name 'average' is taken" in error_of(
        _run(root, tmp_path / "out", {"average": copy["copy"]}))
    # a clean set that lacks a pair
    partial = tmp_path / "partial"
    shutil.copytree(root / "clean", partial / "clean")
    folder = partial / "clean" / "HARVARD-PET-MRI"
    for sub in os.listdir(folder):
        os.remove(folder / sub / "2.png")
    (partial / "noisy").symlink_to(root / "noisy")
    assert "1 only in the noisy set: 2.png" in error_of(_run(partial, tmp_path / "out", copy))
    # a clean twin of another size (no fused image to resize the pair to)
    smaller = tmp_path / "smaller"
    shutil.copytree(root / "clean", smaller / "clean")
    (smaller / "noisy").symlink_to(root / "noisy")
    for sub in os.listdir(smaller / "clean" / "HARVARD-PET-MRI"):
        files.write_files([(str(smaller / "clean" / "HARVARD-PET-MRI" / sub / "1.png"),
                            np.zeros((SIZE // 2, SIZE // 2), np.uint8))])
    assert f"the clean twin is {SIZE // 2}x{SIZE // 2}" in error_of(
        _run(smaller, tmp_path / "out", {}))
    # a fused image missing from one method's clean folder is named with its set
    incomplete = tmp_path / "incomplete"
    shutil.copytree(root / "copy-too", incomplete)
    os.remove(incomplete / "3.png")
    error = error_of(_run(root, tmp_path / "out", {"copy": (root / "copy", incomplete)}))
    assert f"method 'copy (clean)': 1 of {NUM_PAIRS} fused images missing" in error
    assert "3.png" in error
    assert not (tmp_path / "out").exists()
