"""A side-by-side figure of generated pairs, template anatomy next to the phantom: one row per
brain task (pet, spect, ct), each pair shown as it is written (A, then B). Rebuild the figure in
the docs with

    python -m difffccf_jax.data.gallery docs/figures/generated_pairs.png
"""

import sys

import numpy as np
from PIL import Image, ImageDraw

from difffccf_jax.data import generator

TASKS = ("pet", "spect", "ct")
LABEL_HEIGHT, LABEL_WIDTH = 18, 52  # pixels of the column and row labels


def _rgb(image):
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)


def side_by_side(size=176, seed=2, template_pairs=2):
    """[H, W, 3] uint8: per row (TASKS), pairs 0..template_pairs-1 on the template anatomy
    then pair 0 on the phantom, each as A next to B, under column labels and after row labels."""
    columns = [("template", index) for index in range(template_pairs)] + [("phantom", 0)]
    rows = []
    for task in TASKS:
        panels = []
        for anatomy, index in columns:
            pair = generator.make_pair(task, size, seed, index, anatomy=anatomy)
            panels += [_rgb(pair.a), _rgb(pair.b)]
        rows.append(np.concatenate(panels, axis=1))
    body = np.concatenate(rows, axis=0)
    figure = np.zeros((LABEL_HEIGHT + body.shape[0], LABEL_WIDTH + body.shape[1], 3), np.uint8)
    figure[LABEL_HEIGHT:, LABEL_WIDTH:] = body
    image = Image.fromarray(figure)
    draw = ImageDraw.Draw(image)
    for column, (anatomy, index) in enumerate(columns):
        draw.text((LABEL_WIDTH + 2 * size * column + 4, 3), f"{anatomy}: A, B",
                  fill=(255, 255, 255))
    for row, task in enumerate(TASKS):
        draw.text((4, LABEL_HEIGHT + size * row + size // 2 - 6), task, fill=(255, 255, 255))
    return np.asarray(image)


def main(argv=None):
    """Writes the figure to the path given (PNG, colours reduced to a 128-entry palette, which
    keeps it under 300 KB)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m difffccf_jax.data.gallery OUT.png")
    Image.fromarray(side_by_side()).quantize(128).save(argv[0], optimize=True)
    print(f"wrote {argv[0]}")


if __name__ == "__main__":
    main()
