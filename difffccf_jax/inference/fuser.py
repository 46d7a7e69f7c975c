"""Batch fusion of arrays with a trained model, from Python: `Fuser`.

    fuser = difffccf_jax.Fuser.from_checkpoint("pretrained/pet_tiny", task="pet", steps=30)
    fused = fuser(a, b, names=names)  # uint8 RGB [N, H, W, 3]

Inputs are batches of arrays: uint8 levels or floats in [0, 1]; A grey ([H, W] or [H, W, 1];
a colour A becomes its luma), B colour ([H, W, 3]) or grey (JET-mapped where the task's layout
says so, else R = G = B); any H x W, one size per pair when given as lists. They are converted
exactly as `difffccf fuse` converts the files it reads (`layouts.sources_uint8`), so a pair
fuses to the same image from arrays as from its PNG files.

Pairs are padded to size buckets (inference/sizes.py) and fused in batches of a fixed size over
the devices of a mesh (by default all local devices of this process), so the sampler compiles
once per bucket. Each pair's noise comes from its name (`shards.noise_id`), an explicit id,
or else its pixels (`shards.content_id`), never from its position in a batch: a pair comes out
the same in any batch, share or run.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from difffccf_jax import parallel
from difffccf_jax.data import layouts
from difffccf_jax.errors import UserError
from difffccf_jax.inference import sampling, shards, sizes, tiling
from difffccf_jax.model import checkpoints, unet
from difffccf_jax.model import settings as method_settings


class PairInput(NamedTuple):
    """One pair ready to fuse: a [H, W, 1] and b [H, W, 3] YCrCb float32 in [-1, 1], its noise
    id, and `tag`, returned with its result (a name, an index)."""
    tag: Any
    pair_id: int
    a: np.ndarray
    b: np.ndarray


def sampling_settings(config, steps=None, batch_size=None, seed=None, stochastic=False,
                      output=None, chroma=None, register=None, detail_of_b=None):
    """config.sampling with the given choices applied (checked); None keeps the config's."""
    settings = config.sampling
    chosen = dict(steps=steps, batch_size=batch_size, seed=seed, output=output, chroma=chroma,
                  register=register, detail_of_b=detail_of_b)
    for field, value in chosen.items():
        if value is not None:
            settings[field] = value
    settings.add_noise = bool(settings.add_noise or stochastic)
    if not 1 <= settings.steps <= config.diffusion.steps:
        raise UserError(f"--steps {settings.steps}: expected 1..{config.diffusion.steps} "
                        "(the diffusion steps of the checkpoint)")
    if settings.batch_size < 1:
        raise UserError(f"--batch-size {settings.batch_size}: expected a positive number")
    return settings


def build_sampler(config, task, mesh, tile):
    """(sample, schedule) of `config` for `task`, the network evaluated in tile x tile windows
    on larger inputs; the one place the fuser builds its sampler."""
    network = tiling.TiledNetwork(unet.model_from_config(config.model), tile)
    return sampling.sampler_from_config(config, task, mesh=mesh, model=network)


def to_levels(image, what):
    """uint8 levels of an image given as uint8 or as floats in [0, 1] (rounded)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise UserError(f"{what}: expected uint8 levels or floats in [0, 1], got {image.dtype}")
    if image.size and (np.nanmin(image) < 0.0 or np.nanmax(image) > 1.0
                       or np.isnan(image).any()):
        raise UserError(f"{what}: float image with values outside [0, 1]; expected floats in "
                        "[0, 1] or uint8 levels")
    return np.rint(image * 255.0).astype(np.uint8)


def source_image(image, what, colour_allowed):
    """uint8 [H, W] or [H, W, 3] of one source given as [H, W], [H, W, 1] or [H, W, 3]."""
    image = to_levels(image, what)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3 and colour_allowed):
        return image
    raise UserError(f"{what}: expected an [H, W], [H, W, 1] or [H, W, 3] image, got shape "
                    f"{image.shape}")


def as_pairs(images_of_batch, what):
    """[image] of a batch given as one array [N, ...] or a sequence of per-pair arrays."""
    if isinstance(images_of_batch, np.ndarray) or hasattr(images_of_batch, "shape"):
        if np.ndim(images_of_batch) not in (3, 4):
            raise UserError(f"{what}: expected a batch [N, H, W] or [N, H, W, C], got shape "
                            f"{np.shape(images_of_batch)}")
    return list(images_of_batch)


@dataclasses.dataclass
class Fuser:
    """A compiled fusion of batches of pairs with one model, task and sampling settings.

    `fuser(a, b)` fuses a batch of arrays; `fuser.fuse_stream(pairs)` fuses an iterable of
    `PairInput`s of any length and sizes, yielding each pair's result as soon as its batch is
    done (the folder command streams through it). Build one with `Fuser.from_checkpoint`."""
    config: Any  # the checkpoint's config with the sampling choices applied
    settings: method_settings.SamplerSettings  # those of `config`
    task: str
    layout: layouts.Layout
    params: Any
    sample: Any
    schedule: Any
    key: Any
    batch_size: int  # pairs per compiled batch, a multiple of the mesh's device count
    tile: int
    multiple: int
    mesh: Any

    @classmethod
    def from_checkpoint(cls, checkpoint, task=None, steps=None, batch_size=None, seed=None,
                        stochastic=False, output=None, chroma=None, register=None,
                        detail_of_b=None, tile=None, devices=None):
        """The fuser of a checkpoint directory: `task` (default the checkpoint's first task)
        chooses the region rules and how a grey B is coloured; steps, batch_size, seed,
        stochastic, output, chroma, register and detail_of_b override config.sampling
        (`sampling_settings`); the network runs in tile x tile windows on larger inputs (default
        TILE_BOTTLENECK bottleneck pixels a side); devices: the devices the batch is split over
        (default this process's local devices, so that each process of a multi-process run fuses
        its own pairs)."""
        config = checkpoints.read_config(checkpoint)
        settings = sampling_settings(config, steps, batch_size, seed, stochastic, output,
                                     chroma, register, detail_of_b)
        multiple = sizes.size_multiple(config.model)
        tile = sizes.TILE_BOTTLENECK * multiple if tile is None else tile
        sizes.check_tile(tile, multiple)
        task = task or layouts.tasks_from_config(config.data)[0]
        layout = layouts.layout_from_config(config.data, task)
        mesh = parallel.make_mesh(jax.local_devices() if devices is None else devices)
        # One process of several fusing on its own devices reads the checkpoint alone.
        alone = jax.process_count() > 1 and {
            device.process_index for device in mesh.devices.flat} == {jax.process_index()}
        _, params = checkpoints.load_for_inference(checkpoint, alone=alone)  # config: above
        replicated = parallel.replicated(mesh)
        sample, schedule = build_sampler(config, task, mesh, tile)
        params, schedule, key = jax.device_put(
            (params, schedule, jax.random.PRNGKey(settings.seed)), replicated)
        return cls(config=config, settings=method_settings.sampler_settings(config), task=task,
                   layout=layout, params=params, sample=sample, schedule=schedule, key=key,
                   batch_size=sampling.padded_batch_size(settings.batch_size, mesh.size),
                   tile=tile, multiple=multiple, mesh=mesh)

    @property
    def steps(self):
        """The reverse steps of the schedule the sampler runs."""
        return int(self.schedule.betas.shape[0])

    @property
    def compiled_programs(self):
        """How many programs the sampler has compiled (one per bucket and schedule length)."""
        return self.sample._cache_size()  # pylint: disable=protected-access

    def bucket(self, height, width):
        """(H, W) of the bucket a height x width pair is fused at."""
        return sizes.bucket_size(height, width, self.multiple, self.tile)

    def size_error(self, height, width):
        """Why this model cannot fuse a height x width pair, or None."""
        return sizes.compat_size_error(self.config.model, (height, width),
                                       self.bucket(height, width), self.tile, self.multiple)

    def prepare(self, tag, pair_id, a_image, b_image, b_name="B", image_size=None):
        """A PairInput of one pair of uint8 images as read ([H, W] or [H, W, 3]), converted as
        the folder command converts files (B resized to A's size, or both to image_size, and
        coloured by the layout); UserError when A and B differ in aspect ratio."""
        mismatch = sizes.aspect_error(a_image.shape[:2], b_image.shape[:2])
        if mismatch:
            raise UserError(f"{b_name}: {mismatch}")
        a, b = layouts.to_model_inputs(*layouts.sources_uint8(a_image, b_image, self.layout,
                                                              image_size, b_name),
                                       conversion=self.settings.color_conversion)
        return PairInput(tag, int(pair_id), a, b)

    def __call__(self, a, b, names=None, ids=None, extras=False):
        """Fuses a batch of pairs; returns uint8 RGB [N, H, W, 3] when a and b are arrays
        [N, ...] of one size, else a list of [H, W, 3], each at its pair's own size. With
        `extras`, the pairs' `sampling.SampleOutput`s (NumPy, own size: fused YCrCb, rgb,
        masks, regions, deformation field, warped B) instead.

        a: grey A images, b: colour or grey B images (see the module's docstring); names
        (pair names, e.g. file names) or ids (integers) give each pair its noise; without
        them it comes from the pair's pixels."""
        stacked = hasattr(a, "shape") and hasattr(b, "shape")
        a_images, b_images = as_pairs(a, "A"), as_pairs(b, "B")
        if len(a_images) != len(b_images) or not a_images:
            raise UserError(f"expected the same, non-zero number of A and B images, got "
                            f"{len(a_images)} and {len(b_images)}")
        if names is not None and ids is not None:
            raise UserError("give the pairs' names or their ids, not both")
        for given, what in ((names, "names"), (ids, "ids")):
            if given is not None and len(given) != len(a_images):
                raise UserError(f"expected one of the {what} per pair ({len(a_images)}), got "
                                f"{len(given)}")
        inputs = []
        for index, (a_image, b_image) in enumerate(zip(a_images, b_images)):
            a_levels = source_image(a_image, f"A image {index}", colour_allowed=True)
            b_levels = source_image(b_image, f"B image {index}", colour_allowed=True)
            if names is not None:
                pair_id = shards.noise_id(str(names[index]))
            elif ids is not None:
                pair_id = int(ids[index]) % (1 << shards.NOISE_ID_BITS)
            else:
                pair_id = shards.content_id(a_levels, b_levels)
            inputs.append(self.prepare(index, pair_id, a_levels, b_levels,
                                       f"B image {index}"))
        results = dict(self.fuse_stream(inputs, extras=extras))
        ordered = [results[index] if extras else results[index].rgb
                   for index in range(len(inputs))]
        return np.stack(ordered) if stacked and not extras else ordered

    def fuse_stream(self, pairs, extras=False):
        """Yields (tag, SampleOutput of NumPy arrays at the pair's own size) for every
        PairInput of `pairs`, in the order their batches finish. Pairs wait, per bucket, until
        a batch of that bucket is full (the last batch of each bucket at the end); one batch
        runs on the devices while the results of the one before are handed out. Without
        `extras` only the rgb field is fetched (the others are None)."""
        waiting = {}
        running = None
        for pair in pairs:
            size_error = self.size_error(*pair.a.shape[:2])
            if size_error:
                raise UserError(f"pair {pair.tag!r} is {size_error}")
            bucket = self.bucket(*pair.a.shape[:2])
            waiting.setdefault(bucket, []).append(pair)
            if len(waiting[bucket]) == self.batch_size:
                started = self.start_batch(waiting.pop(bucket), bucket)
                if running is not None:
                    yield from self.finish_batch(*running, extras)
                running = started
        for bucket, batch in waiting.items():
            started = self.start_batch(batch, bucket)
            if running is not None:
                yield from self.finish_batch(*running, extras)
            running = started
        if running is not None:
            yield from self.finish_batch(*running, extras)

    def start_batch(self, batch, bucket):
        """(batch, the sampler's output, still on the devices) of up to batch_size pairs padded
        to `bucket`, the batch filled up with copies of its last pair."""
        filled = batch + [batch[-1]] * (self.batch_size - len(batch))
        a, b = (np.stack(arrays) for arrays in zip(
            *(sizes.pad_pair(pair.a, pair.b, *bucket) for pair in filled)))
        ids = np.array([pair.pair_id for pair in filled], np.int32)
        # on the devices first: a multi-process run refuses host arrays for a sharded program
        a, b, ids = jax.device_put((a, b, ids), parallel.batch_sharded(self.mesh))
        return batch, self.sample(self.params, self.schedule, a, b, self.key, ids)

    @staticmethod
    def finish_batch(batch, out, extras):
        """Yields (tag, SampleOutput) of each pair of a started batch, cropped to its size."""
        fields = sampling.SampleOutput(*(
            np.asarray(field) if extras or name == "rgb" else None
            for name, field in zip(sampling.SampleOutput._fields, out)))
        for index, pair in enumerate(batch):
            yield pair.tag, sizes.crop(fields, index, *pair.a.shape[:2])
