"""A tensorflow-datasets builder for the paired sets, written as array_record files.

No TensorFlow is needed: the builder writes array_record files and `tfds.data_source` reads them
back as a random-access sequence of NumPy records. The manual directory is the data root (the
published layout, or the output of `difffccf make-data`); one builder config per task and image
size, named `<task>_<size>`. A record holds the pair already resized and coloured as the loaders
make it, in 8 bits: `a` uint8 [S, S, 1] grey, `b` uint8 [S, S, 3] RGB (JET-mapped where the task
says so), and `name`, the file name. Records keep the loaders' integer-stem order.

A prepared dataset is reused as it is: delete `<data_dir>/difffccf_pairs/<task>_<size>` to
rebuild it after the image folders change.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from difffccf_jax.data import layouts

DATASET_NAME = "difffccf_pairs"
FILE_FORMAT = "array_record"
SPLIT = "train"


@dataclasses.dataclass
class PairsConfig(tfds.core.BuilderConfig):
    """Which task's folders to read and at which size."""
    task: str = "pet"
    folder: str = ""
    a: str = ""
    b: str = ""
    b_is_color: bool = True
    jet: bool = False
    alternates: tuple = ()
    image_size: int = 256

    @property
    def layout(self):
        return layouts.Layout(task=self.task, folder=self.folder, a=self.a, b=self.b,
                              b_is_color=self.b_is_color, jet=self.jet,
                              alternates=tuple(self.alternates))


def config_name(task, image_size):
    return f"{task}_{image_size}"


def builder_config(layout, image_size):
    """The PairsConfig of a layouts.Layout at `image_size`."""
    return PairsConfig(name=config_name(layout.task, image_size), task=layout.task,
                       folder=layout.folder, a=layout.a, b=layout.b,
                       b_is_color=layout.b_is_color, jet=layout.jet,
                       alternates=tuple(layout.alternates), image_size=image_size,
                       description=f"{layout.task} pairs at {image_size} x {image_size}")


class DifffccfPairs(tfds.core.GeneratorBasedBuilder):
    """Paired anatomical (A) and functional (B) slices of one task, from a manual directory."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Grey A, RGB B and the file name per pair."}
    # tfds derives the code path through importlib_resources, which tfds does not install for
    # Python >= 3.9; naming it directly avoids that import.
    code_path = epath.Path(__file__)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the data root in the manual directory: one folder per task in the published "
        "layout (HARVARD-PET-MRI/MRI, HARVARD-PET-MRI/PET, ...), e.g. the output of "
        "`difffccf make-data`.")

    def _info(self):
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description="Paired anatomical and functional image slices for Diff-FCCF fusion.",
            features=tfds.features.FeaturesDict(dict(
                a=tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8),
                b=tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
                name=tfds.features.Text(),
            )),
            disable_shuffling=True,  # keep the loaders' integer-stem order
        )

    def _split_generators(self, dl_manager):
        pairs = layouts.list_pairs(str(dl_manager.manual_dir), self.builder_config.layout)
        return {SPLIT: self._generate_examples(pairs)}

    def _generate_examples(self, pairs):
        config = self.builder_config
        for pair in pairs:
            a, b = layouts.read_pair_uint8(pair, config.layout, config.image_size)
            yield pair.name, dict(a=a, b=b, name=pair.name)


def prepare(data_root, layout, image_size, data_dir):
    """Builds (or reuses) the array_record dataset of one task; returns the builder.

    The folders are checked first, so bad input raises the loaders' UserError rather than a
    tfds error.
    """
    layouts.list_pairs(data_root, layout)
    builder = DifffccfPairs(config=builder_config(layout, image_size), data_dir=data_dir,
                            file_format=FILE_FORMAT)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=data_root))
    return builder


def data_source(task, image_size, data_dir):
    """The prepared dataset of `task` as a random-access sequence of records (tfds.data_source)."""
    return tfds.data_source(f"{DATASET_NAME}/{config_name(task, image_size)}",
                            split=SPLIT, data_dir=data_dir)
