"""The input pipeline: shuffled global batches of pairs, sharded over the ('data',) mesh.

A source is a random-access set of pairs: `len(source)` and `source.take(indices)` ->
dict(a=[n, H, W, 1], b=[n, H, W, 3]) float32 in [-1, 1] (b in YCrCb). `ArraySource` holds the
loaders' arrays in memory; `TfdsSource` reads the array_record dataset of the tfds builder
through `tfds.data_source` and converts its 8-bit records on the fly.

`BatchIterator` yields dict(a=[B, H, W, 1], b=[B, H, W, 3]) jax.Arrays with the global batch B
split over the mesh axis 'data'. The order is a permutation of the set drawn from (seed, epoch),
the same on every process; global batch k of an epoch holds positions [k B, (k + 1) B) of it and
process p loads only its share, rows [p B/P, (p + 1) B/P) of the batch, which
`jax.make_array_from_process_local_data` assembles into the global array. The last incomplete
batch of each epoch is dropped, so shapes are static. The iterator never ends; its position is
`state()` = {'epoch': e, 'step': k}, a dict of ints that `restore(state)` returns to.

With crop_size C > 0 (config.data.crop_size) every pair of a batch is cut to a random C x C
window, the same window for all of the pair's arrays (A, B and any per-pixel field a source
adds), so the batch is [B, C, C, ...]. The windows of global batch k of epoch e are drawn from
an RNG seeded with (seed, e, k), for the whole global batch before each process takes its rows:
they are a function of the position, so a restored iterator cuts the same windows as the
uninterrupted one, on any number of processes.

    source = pipeline.source_from_config(config.data, task)
    batches = pipeline.BatchIterator(source, config.data.batch_size, mesh,
                                     seed=config.data.shuffle_seed,
                                     crop_size=config.data.crop_size)
    for _ in range(batches.steps_per_epoch):
        batch = next(batches)  # dict(a=..., b=...), sharded over mesh axis 'data'
    position = batches.state()  # store with the checkpoint; later batches.restore(position)
"""

import os

import jax
import numpy as np

from difffccf_jax import parallel
from difffccf_jax.data import layouts
from difffccf_jax.errors import UserError


class ArraySource:
    """Pairs held in memory: a [N, H, W, 1] and b [N, H, W, 3], float32 in [-1, 1]."""

    def __init__(self, a, b):
        if len(a) != len(b):
            raise ValueError(f"a has {len(a)} pairs but b has {len(b)}")
        self.a, self.b = a, b

    def __len__(self):
        return len(self.a)

    def take(self, indices):
        return dict(a=np.take(self.a, indices, axis=0), b=np.take(self.b, indices, axis=0))


class TfdsSource:
    """Pairs read through a tfds data source of `DifffccfPairs` records (uint8 a and RGB b)."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def take(self, indices):
        records = self.records.__getitems__([int(index) for index in indices])
        a, b = layouts.to_model_inputs(np.stack([record["a"] for record in records]),
                                       np.stack([record["b"] for record in records]))
        return dict(a=a, b=b)


def source_from_config(data_config, task, cache_dir=""):
    """The pairs of `task`: through the tfds array_record dataset in config.data.tfds_dir, or
    else, in a multi-process run, in `cache_dir` (random access: each process holds only the
    rows it reads); else read into memory from config.data.root. The dataset is prepared by
    process 0 while the others wait."""
    layout = layouts.layout_from_config(data_config, task)
    tfds_dir = data_config.tfds_dir or (cache_dir if jax.process_count() > 1 else "")
    if not tfds_dir:
        arrays = layouts.load_pairs(data_config.root, layout, data_config.image_size)
        return ArraySource(arrays.a, arrays.b)
    from difffccf_jax.data import tfds_builder  # pylint: disable=import-outside-toplevel
    if jax.process_index() == 0:
        tfds_builder.prepare(data_config.root, layout, data_config.image_size, tfds_dir)
    parallel.wait_for_all_processes(f"difffccf-data-{task}-{data_config.image_size}-"
                                    f"{os.path.abspath(tfds_dir)}")
    return TfdsSource(tfds_builder.data_source(task, data_config.image_size, tfds_dir))


CROP_STREAM = 1  # tells the crop RNG's seed (seed, epoch, step, 1) from the order's (seed, epoch)


def image_shape(source):
    """(H, W) of the pairs of `source` (read from its first pair)."""
    return tuple(source.take(np.arange(1))["a"].shape[1:3])


def check_crop_size(crop_size, shape):
    """crop_size as an int: 0 (no crop) or a side that fits images of `shape` (H, W); else a
    UserError naming config.data.crop_size and the image size."""
    if isinstance(crop_size, bool) or int(crop_size) != crop_size or crop_size < 0:
        raise UserError(f"config.data.crop_size={crop_size!r}: expected 0 (no crop) or the "
                        "side in pixels of the square random training crops")
    crop_size = int(crop_size)
    if crop_size:
        height, width = shape
        if crop_size > min(height, width):
            raise UserError(f"config.data.crop_size={crop_size} is larger than the training "
                            f"images ({height} x {width}, config.data.image_size); choose at "
                            f"most {min(height, width)}, or 0 for no crop")
    return crop_size


def crop(arrays, windows, size):
    """{key: [n, size, size, ...]}: row i of every array of `arrays` ({key: [n, H, W, ...]}) cut
    to the window whose top-left corner is windows[i] = (top, left)."""
    return {key: np.stack([value[i, top:top + size, left:left + size]
                           for i, (top, left) in enumerate(windows)])
            for key, value in arrays.items()}


class BatchIterator:
    """Endless iterator of sharded global batches over `source` (module docstring)."""

    def __init__(self, source, global_batch_size, mesh, seed, shuffle=True,
                 process_index=None, process_count=None, crop_size=0):
        self.source, self.global_batch_size, self.seed = source, global_batch_size, seed
        self.shuffle = shuffle
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        parallel.check_batch_size(global_batch_size, mesh)
        if global_batch_size % self.process_count:
            raise UserError(f"global batch size {global_batch_size} must be a multiple of the "
                            f"number of processes ({self.process_count})")
        self.steps_per_epoch = len(source) // global_batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"the data set has {len(source)} pairs, fewer than one global batch "
                            f"of {global_batch_size}; lower config.data.batch_size or add pairs")
        self.local_batch_size = global_batch_size // self.process_count
        self.image_shape = image_shape(source) if crop_size else None
        self.crop_size = check_crop_size(crop_size, self.image_shape)
        self.sharding = parallel.batch_sharded(mesh)
        self.epoch, self.step = 0, 0
        self._order_epoch, self._order = None, None

    def order(self, epoch):
        """[N] int: the permutation of the set used in `epoch`."""
        if self._order_epoch != epoch:
            size = len(self.source)
            self._order = (np.random.default_rng([self.seed, epoch]).permutation(size)
                           if self.shuffle else np.arange(size))
            self._order_epoch = epoch
        return self._order

    def local_indices(self, epoch, step):
        """Indices into the source of this process's share of global batch `step`."""
        start = step * self.global_batch_size + self.process_index * self.local_batch_size
        return self.order(epoch)[start:start + self.local_batch_size]

    def crop_windows(self, epoch, step):
        """[local batch, 2] int (top, left) of the crop windows of this process's rows of global
        batch `step` of `epoch`, drawn for the whole global batch from (seed, epoch, step)."""
        height, width = self.image_shape
        rng = np.random.default_rng([self.seed, epoch, step, CROP_STREAM])
        windows = np.stack([rng.integers(0, height - self.crop_size + 1, self.global_batch_size),
                            rng.integers(0, width - self.crop_size + 1, self.global_batch_size)],
                           axis=-1)
        start = self.process_index * self.local_batch_size
        return windows[start:start + self.local_batch_size]

    def state(self):
        """The position, a dict of ints to store in a checkpoint."""
        return dict(epoch=self.epoch, step=self.step)

    def restore(self, state):
        """Continues from a position returned by `state()`."""
        epoch, step = int(state["epoch"]), int(state["step"])
        if epoch < 0 or not 0 <= step < self.steps_per_epoch:
            raise UserError(f"data iterator state {dict(state)} is out of range (an epoch has "
                            f"{self.steps_per_epoch} steps)")
        self.epoch, self.step = epoch, step

    def __iter__(self):
        return self

    def _local_batch(self):
        """This process's rows of the batch at the current position, {key: NumPy array}."""
        local = self.source.take(self.local_indices(self.epoch, self.step))
        if self.crop_size:
            local = crop(local, self.crop_windows(self.epoch, self.step), self.crop_size)
        return local

    def element_spec(self):
        """{key: jax.ShapeDtypeStruct} of the global batches, to compile before the first."""
        return {key: jax.ShapeDtypeStruct((self.global_batch_size,) + value.shape[1:],
                                          value.dtype, sharding=self.sharding)
                for key, value in self._local_batch().items()}

    def __next__(self):
        local = self._local_batch()
        self.step += 1
        if self.step == self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        return {key: jax.make_array_from_process_local_data(
                    self.sharding, value, (self.global_batch_size,) + value.shape[1:])
                for key, value in local.items()}
