"""Settings defined once: every config field is read by a settings builder or a listed reader;
saved configs of older layouts migrate to what they ran with; the sampler built from Python with
only the config is the one `difffccf fuse` runs."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from difffccf_jax import cli, config_versions
from difffccf_jax.config_cli import load_config, save_json_config
from difffccf_jax.data import generator, images, layouts
from difffccf_jax.errors import UserError
from difffccf_jax.inference import sampling, shards
from difffccf_jax.model import checkpoints, refinement, regions, settings, unet
from difffccf_jax.training import train, weighting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED = os.path.join(ROOT, "pretrained", "pet_tiny")

# Fields read outside the settings builders, by the code that reads them: each must be a field
# of configs/paper.py.
LISTED_READERS = {
    "version": "config_versions.migrate",
    "seed": "train.new_state (parameters, the epoch's task draw)",
    "data.root": "pipeline.source_from_config",
    "data.image_size": "pipeline.source_from_config, checkpoints.expected_params",
    "data.crop_size": "train.setup_run (pipeline.BatchIterator)",
    "data.batch_size": "train.setup_run (pipeline.BatchIterator)",
    "data.shuffle_seed": "train.setup_run (pipeline.BatchIterator)",
    "data.eval_root": "evaluation.trained_run (the held-out pairs a run is scored on)",
    "data.tfds_dir": "pipeline.source_from_config",
    "optim.ema_decay": "train.setup_run",
    "optim.registration_lr_factor": "train.setup_run (train_step)",
    "train.epochs": "train.fit, train.setup_run",
    "train.steps_per_epoch": "train.setup_run",
    "train.checkpoint_every_epochs": "train.fit",
    "train.keep_checkpoints": "train.fit",
    "train.log_every_steps": "train.fit",
    "train.distributed": "train.fit (parallel.initialize_distributed)",
    "train.init_params": "train.initial_params",
    "train.fast_compile": "train.fit",
    "train.max_minutes": "train.fit (training.stopping)",
    "train.checkpoint_every_minutes": "train.fit (training.stopping)",
    "sampling.batch_size": "fusion.sampling_settings",
    "sampling.seed": "fusion.sampling_settings",
}


class Reads:
    """A read-only view of a ConfigDict that records the dotted path of every leaf read."""

    def __init__(self, node, path, seen):
        self._node, self._path, self._seen = node, path, seen

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __getitem__(self, name):
        value = self._node[name]
        path = f"{self._path}.{name}" if self._path else name
        if isinstance(value, ml_collections.ConfigDict):
            return Reads(value, path, self._seen)
        self._seen.add(path)
        return value

    def __contains__(self, name):
        return name in self._node

    def __iter__(self):
        return iter(self._node.keys())

    def keys(self):
        return self._node.keys()

    def items(self):
        return [(name, self[name]) for name in self._node.keys()]


def leaves(node, path=""):
    """The dotted paths of every leaf of a ConfigDict."""
    for name, value in node.items():
        dotted = f"{path}.{name}" if path else name
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, dotted)
        else:
            yield dotted


def unread_fields(config):
    """The leaves of `config` that no settings builder reads and no listed reader names."""
    seen = set()
    reads = Reads(config, "", seen)
    tasks = layouts.tasks_from_config(reads.data)
    for task in config.data.layouts:
        layouts.layout_from_config(reads.data, task)
        regions.rules_from_config(reads.regions, task, "train")
        sampling.sampler_from_config(reads, task)  # the sampling rules, network and schedule
    settings.loss_settings(reads)
    unet.model_from_config(reads.model)
    train.make_optimizer(reads.optim)
    train.learning_rate_at(reads.optim, 0)
    weighting.settings_from_config(reads.weighting, reads.loss.weights, 100)
    assert tasks
    return set(leaves(config)) - seen - set(LISTED_READERS)


def test_every_config_field_is_read(paper_config_path, tiny_config_path):
    """Every field of the paper config is read by a settings builder or a listed reader, and
    each listed reader names a field; a field that nothing reads is found."""
    config = load_config(paper_config_path)
    assert set(LISTED_READERS) <= set(leaves(config))
    assert unread_fields(config) == set()
    assert set(leaves(load_config(tiny_config_path))) == set(leaves(config))
    config.loss.unused_weight = 1.0
    config.sampling.unused_flag = True
    assert unread_fields(config) == {"loss.unused_weight", "sampling.unused_flag"}


def test_shipped_configs_are_the_current_version(paper_config_path, tiny_config_path):
    for path in (paper_config_path, tiny_config_path):
        assert load_config(path).version == config_versions.VERSION


# ---- migration of saved configs --------------------------------------------------------------

VERSION_1_FIELDS = {  # added before versions were numbered: (group, field) -> the old value
    ("", "regions_statistics"): "whole_frame",
    ("model", "mask_prior"): 0.0,
    ("model", "deformation_grid"): 0,
    ("model", "deformation_features"): (),
    ("loss", "registration_pass"): False,
    ("loss", "registration_size"): 0,
    ("loss", "diffusion_crop"): 0,
    ("optim", "registration_lr_factor"): 1.0,
    ("sampling", "output"): "trajectory",
    ("sampling", "known_sources"): False,
    ("sampling", "warp_interpolation"): "bilinear",
    ("sampling", "refine_steps"): 0,
    ("sampling", "refine_learning_rate"): 0.05,
    ("sampling", "refine_strain"): 0.0,
    ("sampling", "refine_from_no_warp"): False,
    ("data", "eval_root"): "",
}
# fields added since, with the values that configs saved before them ran with
LATER_FIELDS = {
    ("sampling", "chroma"): "fused",
    ("model", "detail_gain"): 0.0,
    ("model", "detail_levels"): 4,
    ("sampling", "detail_of_b"): False,
}


def saved_version_0(paper_config_path, directory, task, tasks, multi_task):
    """directory/config.json as code before config versions wrote the paper config: none of
    VERSION_1_FIELDS, no layout alternates, the task choice in data.task / tasks / multi_task."""
    saved = json.loads(load_config(paper_config_path).to_json())
    del saved["version"]
    for group, field in [*VERSION_1_FIELDS, *LATER_FIELDS]:
        del (saved[group] if group else saved)[field]
    for layout in saved["data"]["layouts"].values():
        del layout["alternates"]
    saved["data"].update(task=task, tasks=list(tasks), multi_task=multi_task)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, checkpoints.CONFIG_FILE), "w", encoding="utf-8") as file:
        json.dump(saved, file)


def old_behaviour_refinement(config):
    """The refinement an old config ran with: none (0.05 px, no strain term, one start)."""
    return refinement.Refinement(
        steps=0, learning_rate=0.05, grid=int(config.model.deformation_grid) or 5,
        mi_bins=int(config.loss.mi_bins), mi_sigma=float(config.loss.mi_sigma),
        correlation=config.loss.correlation, ncc_window=int(config.loss.ncc_window),
        similarity_blur=float(config.loss.similarity_blur),
        weights=tuple(float(config.loss.weights[name])
                      for name in ("mi", "correlation", "smoothness", "folding")),
        strain=0.0, from_no_warp=False)


def test_a_config_saved_before_versions_migrates_to_what_it_ran_with(paper_config_path,
                                                                      tmp_path):
    saved_version_0(paper_config_path, str(tmp_path), "pet", ("pet", "spect"), False)
    config = checkpoints.read_config(str(tmp_path))
    assert config.version == config_versions.VERSION
    for (group, field), value in {**VERSION_1_FIELDS, **LATER_FIELDS}.items():
        assert (config[group] if group else config)[field] == value, (group, field)
    assert all(tuple(layout.alternates) == () for layout in config.data.layouts.values())
    assert config.data.tasks == ("pet",)
    assert "task" not in config.data and "multi_task" not in config.data
    # the settings every module takes
    assert settings.sampler_settings(config) == settings.SamplerSettings(
        add_noise=False, register=False, reflect_channels=("pet.cr",), reflect_offset=0.8,
        statistics="whole_frame", output="trajectory", known_sources=False, registration_size=0,
        refinement=old_behaviour_refinement(config), warp_interpolation="bilinear",
        stages="thirds", condition_std="population", color_conversion="float",
        truncate_output=False, schedule_precision="float64", chroma="fused",
        detail=settings.FusionDetail(gain=0.0, levels=4), detail_of_b=False)
    loss = settings.loss_settings(config)
    assert (loss.registration_pass, loss.registration_size, loss.diffusion_crop) == (False, 0, 0)
    model = unet.model_from_config(config.model)
    assert (model.mask_prior, model.deformation_grid, tuple(model.deformation_features)) == (
        0.0, 0, ())
    assert config.optim.registration_lr_factor == 1.0


@pytest.mark.parametrize("task, tasks, multi_task, expected", [
    ("spect", ("pet", "spect", "ct"), True, ("spect", "pet", "ct")),  # fusion's default first
    ("pet", ("pet", "ct"), True, ("pet", "ct")),
    ("ct", ("pet", "spect"), False, ("ct",)),
])
def test_old_task_fields_become_one(paper_config_path, tmp_path, task, tasks, multi_task,
                                    expected):
    """Multi-task: the same tasks drawn, data.task first (the default task of fuse); single
    task: data.task alone."""
    saved_version_0(paper_config_path, str(tmp_path), task, tasks, multi_task)
    config = checkpoints.read_config(str(tmp_path))
    assert config.data.tasks == expected
    assert layouts.tasks_from_config(config.data)[0] == task


def test_the_bundled_model_config_is_current_and_keeps_bs_colours():
    """The bundled model was saved at this config version (nothing to migrate) with the shipped
    output choices: B's own chroma and the detail path of both sources in the fused Y."""
    with open(os.path.join(PRETRAINED, checkpoints.CONFIG_FILE), encoding="utf-8") as file:
        saved = json.load(file)
    assert saved["version"] == config_versions.VERSION
    config = checkpoints.read_config(PRETRAINED)
    assert config.data.tasks == ("pet",)
    sampler = settings.sampler_settings(config)
    assert sampler.chroma == settings.CHROMA_SOURCE
    assert sampler.detail == settings.loss_settings(config).detail == settings.FusionDetail(
        gain=0.2, levels=4)
    assert sampler.detail_of_b
    assert unet.model_from_config(config.model).mask_prior == 40.0


def test_a_current_config_loads_unchanged_and_a_newer_one_is_refused(paper_config_path,
                                                                     tmp_path):
    config = load_config(paper_config_path)
    path = str(tmp_path / "config.json")
    save_json_config(config, path)
    assert checkpoints.read_config(str(tmp_path)).to_dict() == config.to_dict()
    config.version = config_versions.VERSION + 1
    save_json_config(config, path)
    with pytest.raises(UserError, match=f"config.json: config version {config.version} .*newer"):
        checkpoints.read_config(str(tmp_path))


def test_a_missing_field_is_not_given_a_default(paper_config_path):
    """Without migration (a config file of the current version) a missing field is an error,
    not a silent default."""
    config = load_config(paper_config_path)
    del config.sampling["refine_strain"]
    with pytest.raises(AttributeError, match="refine_strain"):
        settings.sampler_settings(config)


# ---- the sampler from Python is the one `difffccf fuse` runs ---------------------------------

SMALL = (("model.channel_mult", "(1, 2)"), ("model.num_res_blocks", "1"),
         ("data.image_size", "16"), ("sampling.steps", "3"))


@pytest.mark.slow
def test_the_sampler_built_from_the_config_is_the_one_fuse_runs(tiny_config_path, tmp_path,
                                                                monkeypatch):
    """A checkpoint of the tiny config fused by `difffccf
    fuse`, and the same pair fused from Python with only the config and the parameters
    (`sampling.sampler_from_config`, the pair's noise id from its name, as fuse gives it, in a
    batch of copies filling the 4 devices): the same settings reach the
    sampler, and the same RGB image comes out."""
    config = load_config(tiny_config_path, SMALL)
    model = unet.model_from_config(config.model)
    params = unet.init_params(model, jax.random.PRNGKey(3), 16)
    checkpoint = str(tmp_path / "model")
    checkpoints.write_params_checkpoint(checkpoint, config, params)
    layout = layouts.layout_from_config(config.data, "pet")
    generator.write_task(str(tmp_path / "data"), layout, 1, 16, seed=5)

    built = []
    real_make_sampler = sampling.make_sampler

    def recording_make_sampler(model, task_rules, reflect, sampler, mesh=None):
        built.append((task_rules, reflect, sampler))
        return real_make_sampler(model, task_rules, reflect, sampler, mesh)

    monkeypatch.setattr(sampling, "make_sampler", recording_make_sampler)
    out = str(tmp_path / "fused")
    assert cli.main(["fuse", "--checkpoint", checkpoint, "--data", str(tmp_path / "data"),
                     "--out", out]) == 0
    sample, schedule = sampling.sampler_from_config(config, config.data.tasks[0])
    assert len(built) == 2 and built[0] == built[1]
    assert built[1][2] == settings.sampler_settings(config)
    pair = layouts.list_pairs(str(tmp_path / "data"), layout)[0]
    a, b = layouts.read_pair(pair, layout)
    copies = jax.device_count()
    fused = sample(params, schedule, np.stack([a] * copies), np.stack([b] * copies),
                   jax.random.PRNGKey(config.sampling.seed),
                   np.full(copies, shards.noise_id(pair.name), np.int32))
    written = images.read_image(os.path.join(out, os.path.splitext(pair.name)[0] + ".png"))
    np.testing.assert_array_equal(written, np.asarray(fused.rgb)[0])
