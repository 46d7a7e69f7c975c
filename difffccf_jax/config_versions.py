"""Saved configs brought up to the current layout once, when they are loaded.

A config saved by older code (a run's or a checkpoint's config.json) lacks the fields added
since, or spells a choice the old way. `migrate` fills each missing field with the value that
reproduces what the old config ran with (not the new default of configs/paper.py) and sets
config.version to VERSION, so that everything downstream reads every field directly
(`model.settings`). A config without a version is version 0.

A new field: give it its value in configs/paper.py, bump VERSION there and here, and append a
step `_to_version_N` to STEPS that fills it in configs of the version before.
"""

from difffccf_jax.errors import UserError

VERSION = 4


def _fill(group, **values):
    """Sets the fields of `group` (a ConfigDict) that it lacks to `values`."""
    for name, value in values.items():
        if name not in group:
            group[name] = value


def _to_version_1(config):
    """Fields added before versions were numbered, at their values of before, and one field
    for the task choice: data.tasks (single-task training when it holds one task; the first is
    fusion's default task) replaces data.task, data.tasks and data.multi_task."""
    _fill(config, regions_statistics="whole_frame")
    # the published m1; a deformation field per pixel, its head on the fusion decoder
    _fill(config.model, mask_prior=0.0, deformation_grid=0, deformation_features=())
    # every row's own field scored, at the pair's own size, on whole pairs
    _fill(config.loss, registration_pass=False, registration_size=0, diffusion_crop=0)
    _fill(config.optim, registration_lr_factor=1.0)
    # the published output and source steps; bilinear warps; no refinement (its step 0.05 px,
    # no strain term, one start)
    _fill(config.sampling, output="trajectory", known_sources=False,
          warp_interpolation="bilinear", refine_steps=0, refine_learning_rate=0.05,
          refine_strain=0.0, refine_from_no_warp=False)
    data = config.data
    _fill(data, eval_root="")
    for layout in data.layouts.values():
        _fill(layout, alternates=())
    if "multi_task" in data or "task" in data:
        single = (data.task,) if "task" in data else tuple(data.tasks)[:1]
        tasks = tuple(data.tasks) if data.get("multi_task", False) else single
        if single[0] in tasks:  # fusion's default task stays data.task
            tasks = single + tuple(task for task in tasks if task != single[0])
        for name in ("task", "multi_task", "tasks"):
            if name in data:
                del data[name]
        data.tasks = tasks


def _to_version_2(config):
    """The published sampling loop's five details as settings, at the values configs of version
    1 ran with: equal thirds, the population std, float colour conversions, rounded output
    levels, float64 schedule tables; and no timed checkpoints."""
    _fill(config.sampling, stages="thirds", condition_std="population", color_conversion="float",
          output_levels="round", schedule_precision="float64")
    _fill(config.train, checkpoint_every_minutes=0.0)


def _to_version_3(config):
    """The colour and detail choices, at the values configs of version 2 ran with: the chroma
    runs' Cr/Cb in the output and no detail path in the fused Y."""
    _fill(config.sampling, chroma="fused")
    _fill(config.model, detail_gain=0.0, detail_levels=4)


def _to_version_4(config):
    """B's detail band in the sampler's clean output, off as in configs of version 3."""
    _fill(config.sampling, detail_of_b=False)


# STEPS[v] brings a version-v config to version v + 1
STEPS = (_to_version_1, _to_version_2, _to_version_3, _to_version_4)


def migrate(config, where="config"):
    """`config` (a ConfigDict, changed in place and returned) at VERSION. where: what it was
    read from, for the error about a config saved by a newer version."""
    version = config.get("version", 0)
    if not isinstance(version, int) or not 0 <= version <= VERSION:
        raise UserError(f"{where}: config version {version!r} is not one this difffccf reads "
                        f"(0..{VERSION}); it was saved by a newer version")
    with config.unlocked():
        for step in STEPS[version:]:
            step(config)
        config.version = VERSION
    return config

