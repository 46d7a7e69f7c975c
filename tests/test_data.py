"""Loaders of the five layouts, their bad-input errors, the tfds builder and the input pipeline,
all on generated data."""

import os
import shutil
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image

from difffccf_jax import color, parallel
from difffccf_jax.config_cli import load_config
from difffccf_jax.data import generator, images, layouts, pipeline, tfds_builder
from difffccf_jax.errors import UserError

SIZE = 32
NUM_PAIRS = {"pet": 10, "ct": 10, "spect": 3, "gfp": 3, "adni": 3}


@pytest.fixture(scope="module")
def data_config(paper_config_path):
    config = load_config(paper_config_path)
    config.data.image_size = SIZE
    return config.data


@pytest.fixture(scope="module")
def root(tmp_path_factory, data_config):
    """A data root with every task generated in the published layout."""
    folder = str(tmp_path_factory.mktemp("data"))
    for task, num in NUM_PAIRS.items():
        generator.write_task(folder, layouts.layout_from_config(data_config, task), num, SIZE,
                             seed=0)
    return folder


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, root, data_config):
    folder = str(tmp_path_factory.mktemp("tfds"))
    for task in ("pet", "ct"):
        tfds_builder.prepare(root, layouts.layout_from_config(data_config, task), SIZE, folder)
    return folder


def expected_inputs(a_file, b_file, jet):
    """The loader's output computed directly: grey A and (JET-mapped) B -> YCrCb -> [-1, 1]."""
    a = np.asarray(Image.open(a_file), np.float64)
    b = np.asarray(Image.open(b_file))
    if jet:
        b = color.colormap_lut("jet")[b]
    return a[..., None] / 127.5 - 1, color.rgb_to_ycrcb(b.astype(np.float64)) / 127.5 - 1


# ---------------------------------------------------------------- loaders


@pytest.mark.parametrize("task", sorted(NUM_PAIRS))
def test_each_layout_loads_its_generated_set(root, data_config, task):
    layout = layouts.layout_from_config(data_config, task)
    loaded = layouts.load_pairs(root, layout, SIZE)
    num = NUM_PAIRS[task]
    chex.assert_shape(loaded.a, (num, SIZE, SIZE, 1))
    chex.assert_shape(loaded.b, (num, SIZE, SIZE, 3))
    assert loaded.a.dtype == loaded.b.dtype == np.float32
    assert loaded.a.min() >= -1 and loaded.a.max() <= 1 and loaded.b.min() >= -1
    assert loaded.names == tuple(f"{i}.png" for i in range(1, num + 1))
    folder = os.path.join(root, layout.folder)
    for index in (0, num - 1):
        a, b = expected_inputs(os.path.join(folder, layout.a, loaded.names[index]),
                               os.path.join(folder, layout.b, loaded.names[index]), layout.jet)
        np.testing.assert_allclose(loaded.a[index], a, atol=1e-6)
        np.testing.assert_allclose(loaded.b[index], b, atol=1e-5)
    if task in ("ct", "adni"):  # JET-mapped grey B: the chroma channels carry the values
        assert loaded.b[..., 1:].std() > 0.1


def test_resize_to_the_configured_size(root, data_config):
    layout = layouts.layout_from_config(data_config, "pet")
    pair = layouts.list_pairs(root, layout)[0]
    a, b = layouts.read_pair_uint8(pair, layout, 16)
    chex.assert_shape([a, b], [(16, 16, 1), (16, 16, 3)])
    expected = Image.open(pair.a).resize((16, 16), Image.BILINEAR)
    np.testing.assert_array_equal(a[..., 0], np.asarray(expected))


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def make_layout(tmp_path, names_a, names_b, task="pet", a_value=None, b_value=None):
    """A PET-MRI style folder with the given file names (constant images unless given)."""
    layout = layouts.Layout(task=task, folder="SET", a="A", b="B", b_is_color=True, jet=False)
    for name in names_a:
        write_png(str(tmp_path / "SET" / "A" / name),
                  np.full((8, 8), 50) if a_value is None else a_value)
    for name in names_b:
        write_png(str(tmp_path / "SET" / "B" / name),
                  np.full((8, 8, 3), 90) if b_value is None else b_value)
    return layout


def test_pairs_are_ordered_by_integer_stem(tmp_path):
    names = ["10.png", "2.png", "1.png", "scan.png", ".hidden.png"]
    layout = make_layout(tmp_path, names, names)
    (tmp_path / "SET" / "A" / "notes.txt").write_text("not a slice")  # other files are skipped
    assert [p.name for p in layouts.list_pairs(str(tmp_path), layout)] == [
        "1.png", "2.png", "10.png", "scan.png"]


def test_gfp_accepts_both_published_spellings(root, data_config, tmp_path):
    layout = layouts.layout_from_config(data_config, "gfp")
    assert (layout.a, layout.b, layout.alternates) == ("t", "g", ("g:f",))
    original = layouts.load_pairs(root, layout, SIZE)
    readme_style = tmp_path / "GFP"  # phase contrast in g, fluorescence in f
    shutil.copytree(os.path.join(root, "GFP", "t"), readme_style / "g")
    shutil.copytree(os.path.join(root, "GFP", "g"), readme_style / "f")
    renamed = layouts.load_pairs(str(tmp_path), layout, SIZE)
    np.testing.assert_array_equal(renamed.a, original.a)
    np.testing.assert_array_equal(renamed.b, original.b)
    shutil.copytree(os.path.join(root, "GFP", "t"), readme_style / "t")
    with pytest.raises(UserError, match="ambiguous layout, both t/g and g/f exist"):
        layouts.list_pairs(str(tmp_path), layout)


# ---------------------------------------------------------------- bad input


def test_missing_folders_are_named(tmp_path, data_config):
    layout = layouts.layout_from_config(data_config, "spect")
    with pytest.raises(UserError, match="data root '.*nowhere' does not exist"):
        layouts.list_pairs(str(tmp_path / "nowhere"), layout)
    with pytest.raises(UserError, match="HARVARD-SPECT-MRI: folder of task 'spect' not found"):
        layouts.list_pairs(str(tmp_path), layout)
    os.makedirs(tmp_path / "HARVARD-SPECT-MRI" / "MRI")
    with pytest.raises(UserError, match="expected sub-folders 'MRI' and 'SPECT'"):
        layouts.list_pairs(str(tmp_path), layout)


def test_unmatched_names_are_listed(tmp_path):
    layout = make_layout(tmp_path, ["1.png", "2.png", "3.png"], ["1.png", "4.png"])
    with pytest.raises(UserError) as error:
        layouts.list_pairs(str(tmp_path), layout)
    message = str(error.value)
    assert "do not match" in message
    assert "only in " + str(tmp_path / "SET" / "A") + ": 2.png, 3.png" in message
    assert "only in " + str(tmp_path / "SET" / "B") + ": 4.png" in message


def test_empty_set_is_refused(tmp_path):
    layout = make_layout(tmp_path, [], [])
    os.makedirs(tmp_path / "SET" / "A")
    os.makedirs(tmp_path / "SET" / "B")
    with pytest.raises(UserError, match="hold no images"):
        layouts.list_pairs(str(tmp_path), layout)


@pytest.mark.parametrize("damage", ["text", "truncated"])
def test_unreadable_image_is_named(tmp_path, damage):
    noise = np.random.default_rng(0).integers(0, 256, (8, 8, 3))
    layout = make_layout(tmp_path, ["1.png", "2.png"], ["1.png", "2.png"], b_value=noise)
    bad = tmp_path / "SET" / "B" / "2.png"
    if damage == "text":
        bad.write_text("not an image")
        expected = "2.png: not an image file"
    else:
        bad.write_bytes(bad.read_bytes()[:-40])  # cut inside the pixel data
        expected = "2.png: unreadable or truncated image"
    pairs = layouts.list_pairs(str(tmp_path), layout)
    layouts.read_pair(pairs[0], layout, 8)
    with pytest.raises(UserError, match=expected):
        layouts.read_pair(pairs[1], layout, 8)
    with pytest.raises(UserError, match=expected):
        layouts.load_pairs(str(tmp_path), layout, 8)


def test_b_of_another_size_is_resized_to_a(tmp_path):
    rng = np.random.default_rng(2)
    a_image = rng.integers(0, 256, (8, 12)).astype(np.uint8)
    b_image = rng.integers(0, 256, (15, 10, 3)).astype(np.uint8)
    layout = make_layout(tmp_path, ["1.png"], ["1.png"], a_value=a_image, b_value=b_image)
    pair = layouts.list_pairs(str(tmp_path), layout)[0]
    a, b = layouts.read_pair_uint8(pair, layout)  # A's own size, 8 rows x 12 columns
    np.testing.assert_array_equal(a[..., 0], a_image)
    np.testing.assert_array_equal(
        b, np.asarray(Image.fromarray(b_image).resize((12, 8), Image.BILINEAR)))
    # a requested (height, width) resizes both
    a, b = layouts.read_pair_uint8(pair, layout, (6, 10))
    np.testing.assert_array_equal(
        a[..., 0], np.asarray(Image.fromarray(a_image).resize((10, 6), Image.BILINEAR)))
    np.testing.assert_array_equal(
        b, np.asarray(Image.fromarray(b_image).resize((10, 6), Image.BILINEAR)))


def test_padding_fill_is_the_border_median():
    image = np.full((4, 5, 2), 200.0, np.float32)  # the inside (rows 1-2, columns 1-3) is ignored
    border = np.ones((4, 5), bool)
    border[1:-1, 1:-1] = False
    # channel 0: 9 border pixels of 3 and 5 of 90 (an object touching the edge), median 3;
    # channel 1: the 14 border values 0..13, median (6 + 7) / 2
    image[border, 0] = [3] * 9 + [90] * 5
    image[border, 1] = np.arange(14)
    np.testing.assert_array_equal(images.border_median(image), [3.0, 6.5])
    padded = images.pad_with_background(image, 6, 8)
    np.testing.assert_array_equal(padded[:4, :5], image)
    np.testing.assert_array_equal(padded[4:], np.broadcast_to([3.0, 6.5], (2, 8, 2)))
    np.testing.assert_array_equal(padded[:, 5:], np.broadcast_to([3.0, 6.5], (6, 3, 2)))
    assert images.pad_with_background(image, 4, 5) is image  # already that size: no copy
    # batches, and jax.numpy under jit (for code that pads inside a compiled function)
    batch = np.stack([image, image[::-1] + 1])
    expected = [[3.0, 6.5], [4.0, 7.5]]
    np.testing.assert_array_equal(images.border_median(batch), expected)
    np.testing.assert_array_equal(
        jax.jit(lambda x: images.border_median(x, xp=jnp))(batch), expected)


def test_colour_where_grey_is_expected_and_vice_versa(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 10
    layout = make_layout(tmp_path, ["1.png"], ["1.png"], a_value=rgb, b_value=np.full((8, 8), 77))
    pair = layouts.list_pairs(str(tmp_path), layout)[0]
    a, b = layouts.read_pair_uint8(pair, layout, 8)
    # a colour A becomes its luma; a grey B is used as it is (R = G = B) when not JET-mapped
    np.testing.assert_array_equal(a, round(0.299 * 200 + 0.587 * 100 + 0.114 * 10))
    np.testing.assert_array_equal(b, 77)
    _, b_unit = layouts.read_pair(pair, layout, 8)
    np.testing.assert_allclose(b_unit[..., 1:], 128 / 127.5 - 1, atol=1e-6)  # no chroma
    # a grey B where JET mapping is asked for is mapped; a colour one is refused, explained
    jet_layout = layouts.Layout(task="ct", folder="SET", a="A", b="B", b_is_color=False,
                                jet=True)
    np.testing.assert_array_equal(layouts.read_pair_uint8(pair, jet_layout, 8)[1],
                                  np.broadcast_to(color.colormap_lut("jet")[77], (8, 8, 3)))
    write_png(pair.b, rgb)
    with pytest.raises(UserError, match="B image is colour, but task 'ct' expects a grey image "
                                        "to JET-map; set config.data.layouts.ct.jet=False"):
        layouts.read_pair(pair, jet_layout, 8)


def test_sixteen_bit_grey_is_scaled_to_eight_bits(tmp_path):
    path = str(tmp_path / "deep.png")
    Image.fromarray(np.full((4, 4), 257 * 200, np.uint16)).save(path)
    np.testing.assert_array_equal(images.read_image(path), 200)


def test_displacement_errors(tmp_path, root, data_config):
    layout = layouts.layout_from_config(data_config, "pet")
    pair = layouts.list_pairs(root, layout)[0]
    with pytest.raises(UserError, match="has no displacement field"):
        layouts.read_displacement(pair, SIZE)
    bad = str(tmp_path / "1.npy")
    np.save(bad, np.zeros((4, 4, 3)))
    with pytest.raises(UserError, match=r"expected a square \[H, W, 2\] field"):
        layouts.read_displacement(layouts.PairFiles("1.png", pair.a, pair.b, bad), SIZE)


# ---------------------------------------------------------------- tfds builder


def test_tfds_records_equal_the_loaders_output(tfds_dir, root, data_config):
    assert "tensorflow" not in sys.modules
    for task in ("pet", "ct"):
        layout = layouts.layout_from_config(data_config, task)
        records = tfds_builder.data_source(task, SIZE, tfds_dir)
        pairs = layouts.list_pairs(root, layout)
        assert len(records) == len(pairs) == NUM_PAIRS[task]
        for index, pair in enumerate(pairs):
            a, b = layouts.read_pair_uint8(pair, layout, SIZE)
            record = records[index]
            assert record["name"].decode() == pair.name  # integer-stem order is kept
            np.testing.assert_array_equal(record["a"], a)
            np.testing.assert_array_equal(record["b"], b)
    files = os.listdir(os.path.join(tfds_dir, tfds_builder.DATASET_NAME, f"pet_{SIZE}", "1.0.0"))
    assert any(".array_record" in name for name in files)


def test_tfds_source_and_array_source_agree(tfds_dir, root, data_config):
    loaded = layouts.load_pairs(root, layouts.layout_from_config(data_config, "ct"), SIZE)
    from_arrays = pipeline.ArraySource(loaded.a, loaded.b).take(np.array([7, 2, 5]))
    from_tfds = pipeline.TfdsSource(tfds_builder.data_source("ct", SIZE, tfds_dir)).take(
        np.array([7, 2, 5]))
    for key in ("a", "b"):
        np.testing.assert_array_equal(from_tfds[key], from_arrays[key])


def test_source_from_config_reads_folders_or_tfds(tfds_dir, root, data_config, tmp_path):
    """One process reads the folders into memory (a multi-process run's cache folder is left
    unused; tests/test_train.py checks the multi-process cache), or the tfds_dir cache."""
    config = data_config.copy_and_resolve_references()
    config.root = root
    in_memory = pipeline.source_from_config(config, "pet", cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()
    config.tfds_dir = tfds_dir
    through_tfds = pipeline.source_from_config(config, "pet")
    assert isinstance(in_memory, pipeline.ArraySource)
    assert isinstance(through_tfds, pipeline.TfdsSource)
    np.testing.assert_array_equal(through_tfds.take(np.arange(10))["b"], in_memory.b)


# ---------------------------------------------------------------- input pipeline


@pytest.fixture(scope="module")
def pet_source(root, data_config):
    loaded = layouts.load_pairs(root, layouts.layout_from_config(data_config, "pet"), SIZE)
    return pipeline.ArraySource(loaded.a, loaded.b)


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh()


def test_batches_are_global_arrays_sharded_over_the_mesh(pet_source, mesh):
    assert mesh.size == 4
    iterator = pipeline.BatchIterator(pet_source, 4, mesh, seed=0)
    batch = next(iterator)
    chex.assert_shape([batch["a"], batch["b"]], [(4, SIZE, SIZE, 1), (4, SIZE, SIZE, 3)])
    expected_sharding = NamedSharding(mesh, PartitionSpec("data"))
    for value in batch.values():
        assert value.sharding.is_equivalent_to(expected_sharding, value.ndim)
        assert [shard.data.shape[0] for shard in value.addressable_shards] == [1, 1, 1, 1]
    indices = np.random.default_rng([0, 0]).permutation(10)[:4]
    np.testing.assert_array_equal(np.asarray(batch["b"]), pet_source.b[indices])


def test_order_is_a_seeded_permutation_dropping_the_remainder(pet_source, mesh):
    iterator = pipeline.BatchIterator(pet_source, 4, mesh, seed=3)
    assert iterator.steps_per_epoch == 2  # 10 pairs, batches of 4: 2 pairs dropped per epoch
    epoch0 = np.concatenate([iterator.local_indices(0, step) for step in range(2)])
    epoch1 = np.concatenate([iterator.local_indices(1, step) for step in range(2)])
    assert len(set(epoch0)) == 8 and len(set(epoch1)) == 8
    assert not np.array_equal(epoch0, epoch1)
    again = pipeline.BatchIterator(pet_source, 4, mesh, seed=3)
    np.testing.assert_array_equal(again.local_indices(1, 1), iterator.local_indices(1, 1))
    other = pipeline.BatchIterator(pet_source, 4, mesh, seed=4)
    assert not np.array_equal(other.order(0), iterator.order(0))
    unshuffled = pipeline.BatchIterator(pet_source, 4, mesh, seed=3, shuffle=False)
    np.testing.assert_array_equal(unshuffled.local_indices(5, 1), [4, 5, 6, 7])


def test_processes_load_disjoint_shares_of_each_global_batch(pet_source, mesh):
    whole = pipeline.BatchIterator(pet_source, 4, mesh, seed=1, process_index=0,
                                   process_count=1)
    shares = [pipeline.BatchIterator(pet_source, 4, mesh, seed=1, process_index=p,
                                     process_count=2) for p in range(2)]
    for step in range(2):
        parts = [share.local_indices(0, step) for share in shares]
        assert [len(part) for part in parts] == [2, 2]
        np.testing.assert_array_equal(np.concatenate(parts), whole.local_indices(0, step))


def test_iterator_state_restores_the_sequence(pet_source, mesh):
    iterator = pipeline.BatchIterator(pet_source, 4, mesh, seed=2)
    for _ in range(3):  # into the second epoch
        next(iterator)
    state = iterator.state()
    assert state == {"epoch": 1, "step": 1} and all(type(v) is int for v in state.values())
    expected = [np.asarray(next(iterator)["a"]) for _ in range(2)]
    resumed = pipeline.BatchIterator(pet_source, 4, mesh, seed=2)
    resumed.restore(state)
    for batch in expected:
        np.testing.assert_array_equal(np.asarray(next(resumed)["a"]), batch)
    with pytest.raises(UserError, match="out of range"):
        resumed.restore({"epoch": 0, "step": 2})


def coded_source(num=10, size=SIZE):
    """Pairs whose every value names its place: A = 10000 n + 100 y + x, and B's channel c =
    -(A + 0.25 c), so a crop tells which pair and window it came from."""
    n, y, x = np.meshgrid(np.arange(num), np.arange(size), np.arange(size), indexing="ij")
    a = (10000 * n + 100 * y + x).astype(np.float32)[..., None]
    b = -(a + np.float32(0.25) * np.arange(3, dtype=np.float32))
    return pipeline.ArraySource(a, b)


def test_crops_of_a_and_b_come_from_one_window(mesh):
    source, crop = coded_source(), 20
    iterator = pipeline.BatchIterator(source, 4, mesh, seed=5, crop_size=crop)
    windows = set()
    for _ in range(6):  # three epochs
        epoch, step = iterator.epoch, iterator.step
        indices = iterator.local_indices(epoch, step)
        batch = {key: np.asarray(value) for key, value in next(iterator).items()}
        chex.assert_shape([batch["a"], batch["b"]], [(4, crop, crop, 1), (4, crop, crop, 3)])
        for row, index in enumerate(indices):
            code = int(batch["a"][row, 0, 0, 0])
            pair, top, left = code // 10000, code // 100 % 100, code % 100
            assert pair == index and top + crop <= SIZE and left + crop <= SIZE
            window = (slice(top, top + crop), slice(left, left + crop))
            np.testing.assert_array_equal(batch["a"][row], source.a[pair][window])
            np.testing.assert_array_equal(batch["b"][row], source.b[pair][window])
            windows.add((top, left))
    assert len(windows) > 12  # a new window for every pair of every batch, not a fixed one
    # the whole side is a valid window: the crop is then the pair itself
    whole = pipeline.BatchIterator(source, 4, mesh, seed=5, crop_size=SIZE)
    np.testing.assert_array_equal(np.asarray(next(whole)["b"]),
                                  source.b[whole.local_indices(0, 0)])


def test_element_spec_describes_the_next_batch_without_consuming_it(mesh):
    iterator = pipeline.BatchIterator(coded_source(), 4, mesh, seed=5, crop_size=20)
    next(iterator)
    position = iterator.state()
    spec = iterator.element_spec()
    assert iterator.state() == position
    batch = next(iterator)
    assert sorted(spec) == sorted(batch)
    for key, value in batch.items():
        assert (spec[key].shape, spec[key].dtype) == (value.shape, value.dtype)
        assert spec[key].sharding == value.sharding


def test_restored_iterator_cuts_the_same_crops(mesh):
    source = coded_source()
    iterator = pipeline.BatchIterator(source, 4, mesh, seed=2, crop_size=12)
    for _ in range(3):
        next(iterator)
    state = iterator.state()
    expected = [{key: np.asarray(value) for key, value in next(iterator).items()}
                for _ in range(3)]
    resumed = pipeline.BatchIterator(source, 4, mesh, seed=2, crop_size=12)
    resumed.restore(state)
    for batch in expected:
        for key, value in next(resumed).items():
            np.testing.assert_array_equal(np.asarray(value), batch[key])
    # other seeds cut other windows; processes cut their rows of the global batch's windows
    other = pipeline.BatchIterator(source, 4, mesh, seed=3, crop_size=12)
    assert not np.array_equal(other.crop_windows(1, 1), iterator.crop_windows(1, 1))
    shares = [pipeline.BatchIterator(source, 4, mesh, seed=2, crop_size=12, process_index=p,
                                     process_count=2) for p in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([share.crop_windows(1, 0) for share in shares]),
        iterator.crop_windows(1, 0))


def test_bad_crop_sizes_name_the_field(pet_source, mesh):
    with pytest.raises(UserError, match=r"config.data.crop_size=33 is larger than the training "
                                        r"images \(32 x 32"):
        pipeline.BatchIterator(pet_source, 4, mesh, seed=0, crop_size=SIZE + 1)
    with pytest.raises(UserError, match=r"config.data.crop_size=-4: expected 0"):
        pipeline.BatchIterator(pet_source, 4, mesh, seed=0, crop_size=-4)
    assert pipeline.BatchIterator(pet_source, 4, mesh, seed=0).crop_size == 0


def test_pipeline_bad_sizes(pet_source, mesh):
    with pytest.raises(UserError, match="has 10 pairs, fewer than one global batch of 12"):
        pipeline.BatchIterator(pet_source, 12, mesh, seed=0)
    with pytest.raises(UserError, match="multiple of the number of devices"):
        pipeline.BatchIterator(pet_source, 6, mesh, seed=0)


def test_input_notes_name_the_pairs_converted_on_reading(tmp_path):
    """One line for 16-bit images (A or B) and one for grey B images where colour is expected,
    each naming its pairs; none for 8-bit colour pairs, and no grey-B line for a JET task."""
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 200
    names = ["1.png", "2.png", "3.png", "4.png"]
    layout = make_layout(tmp_path, names, names, b_value=colour)
    Image.fromarray(np.full((8, 8), 4000, np.uint16)).save(tmp_path / "SET" / "A" / "2.png")
    write_png(str(tmp_path / "SET" / "B" / "3.png"), np.full((8, 8), 90))
    write_png(str(tmp_path / "SET" / "B" / "4.png"), np.full((8, 8, 3), 60))  # grey as RGB
    pairs = layouts.list_pairs(str(tmp_path), layout)
    assert layouts.input_notes(pairs, layout) == (
        "note: 1 pair (2.png) with 16-bit images, scaled to 8 bits (levels / 257)",
        "note: 2 pairs (3.png, 4.png) with a grey B where task 'pet' expects colour: B gives no "
        "colour to the fused image")
    assert layouts.input_notes(pairs[:1], layout) == ()
    jet_layout = layouts.Layout(task="ct", folder="SET", a="A", b="B", b_is_color=False,
                                jet=True)
    assert layouts.input_notes(pairs[2:], jet_layout) == ()
