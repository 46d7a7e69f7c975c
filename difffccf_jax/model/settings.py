"""The method's settings as frozen, typed values, each built from the config in one function.

The dataclasses have no defaults of their own: a default lives in one place, the config files
(configs/paper.py; configs/tiny.py overrides some), and a config saved by older code is brought
up to date once, when it is loaded (`config_versions.migrate`). The losses, the sampler and the
registration refinement take these objects, never the config; the network is
`unet.model_from_config(config.model)`. All are hashable: close over them or pass them as
static arguments of jit.

A new config field: set its value in configs/paper.py; add it to the dataclass of its role and
read it in that dataclass's builder here (a field that a command or the training loop reads
directly goes into LISTED_READERS of tests/test_settings.py instead); and in
`config_versions` bump VERSION (and config.version in configs/paper.py) with a step that gives
configs saved before it the value that reproduces what they ran with.
"""

import dataclasses

from difffccf_jax import color
from difffccf_jax.errors import UserError
from difffccf_jax.model import composition, diffusion, refinement, regions, similarity, warping

OUTPUT_TRAJECTORY = "trajectory"  # the reverse run's x, as published
OUTPUT_CLEAN = "clean"  # Y rows: the clean fused estimate of the last step
OUTPUTS = (OUTPUT_TRAJECTORY, OUTPUT_CLEAN)
LEVELS_ROUND = "round"
LEVELS_TRUNCATE = "truncate"  # the published cast to uint8
OUTPUT_LEVELS = (LEVELS_ROUND, LEVELS_TRUNCATE)
CHROMA_FUSED = "fused"  # Cr/Cb: the chroma runs' result, as published
CHROMA_SOURCE = "source"  # Cr/Cb: B's own, so that the fused image keeps B's colours
CHROMAS = (CHROMA_FUSED, CHROMA_SOURCE)


@dataclasses.dataclass(frozen=True)
class FusionDetail:
    """The detail path of the clean fused Y (config.model.detail_gain, detail_levels;
    `composition.clean_luma`): gain times A's detail band above `levels` pyramid levels, added
    where B is kept; gain 0 is the published composition."""
    gain: float
    levels: int


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The training loss (config.loss, config.regions_statistics, docs/method.md section 5).

    loss_scale: factor of the noise L1; quality_weights: (SSIM, gradient, intensity) weights of
    the Cr/Cb rows, luma_quality_weights those of the Y rows (`losses.quality_loss`);
    stage_conditions: train each row with the conditions the sampler gives its noise level
    instead of always (A, B); mi_bins / mi_sigma: Parzen bins and kernel width in bins (also the
    correlation ratio's); correlation: 'ratio', 'ncc' (local NCC over ncc_window pixels) or
    'mind' (`similarity.mind_distance`); similarity_blur: the standard deviation (pixels) of
    the Gaussian blur of A and B before the similarity terms, 0 for none; region_statistics: how
    the clean fused chroma is re-standardised, regions.WHOLE_FRAME (published) or
    regions.IN_REGION (`regions.restandardise`); registration_pass: the registration terms score
    the field of a pass of the network on the clean pair at t = 0 (input [A, B_Y, A, B_Y]), the
    field the sampler warps B with, instead of every row's field at its random t and conditions
    (always off for the published model, model.compat, whose "deformation" is [m1, m2]);
    registration_size: that pass sees the pair shrunk to this many pixels a side (0: as it is;
    `registration.predict_field`); diffusion_crop: > 0, the diffusion rows (noise, fusion,
    quality) see a random window of this side of each pair, the registration pass the whole
    pair; detail: the detail path of the clean fused Y (`detail_settings`)."""
    loss_scale: float
    quality_weights: tuple
    luma_quality_weights: tuple
    stage_conditions: bool
    mi_bins: int
    mi_sigma: float
    correlation: str
    ncc_window: int
    similarity_blur: float
    region_statistics: str
    registration_pass: bool
    registration_size: int
    diffusion_crop: int
    detail: FusionDetail


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """The hierarchical sampler (config.sampling, docs/method.md sections 6-7;
    `sampling.make_sampler`).

    add_noise: stochastic mode; register: warp B by the registration pass's field first (never
    for the published model, model.compat); reflect_channels: the chroma channels
    ('task.channel') whose post-step is reflect_offset - x inside the region instead of
    re-standardising; statistics: the re-standardisation of the other chroma rows
    (config.regions_statistics); output: what the Y rows return (OUTPUTS); known_sources: x^A
    and x^B move to their posterior means from their known clean sources; registration_size: the
    registration pass's side (config.loss.registration_size, as training); refinement: the
    instance optimisation of the field (`refinement.Refinement`); warp_interpolation: how the
    field warps B (warping.INTERPOLATIONS). The published loop's details (docs/method.md
    section 6): stages, where the hierarchical stages split the schedule
    (composition.STAGE_SPLITS); condition_std, how A is standardised to B_c
    (regions.CONDITION_STDS); color_conversion, B's RGB -> YCrCb and the output's YCrCb -> RGB
    (color.CONVERSIONS); truncate_output, the fused levels floored (config.sampling
    .output_levels 'truncate') rather than rounded; schedule_precision, the schedule tables'
    precision (diffusion.TABLE_PRECISIONS). chroma: the output's Cr/Cb, CHROMA_FUSED (the chroma
    runs', published) or CHROMA_SOURCE (B's own); detail: the detail path of the clean Y
    (`detail_settings`); detail_of_b: that path also adds B's detail band inside B's functional
    region where A is kept (`sampling.final_rows`)."""
    add_noise: bool
    register: bool
    reflect_channels: tuple
    reflect_offset: float
    statistics: str
    output: str
    known_sources: bool
    registration_size: int
    refinement: refinement.Refinement
    warp_interpolation: str
    stages: str
    condition_std: str
    color_conversion: str
    truncate_output: bool
    schedule_precision: str
    chroma: str
    detail: FusionDetail
    detail_of_b: bool


def _require(condition, field, expected, value):
    if not condition:
        raise UserError(f"config field {field}: expected {expected}, got {value!r}")


def _choice(value, field, choices):
    _require(value in choices, field, f"one of {', '.join(choices)}", value)
    return str(value)


def _flag(value, field):
    _require(isinstance(value, bool), field, "True or False", value)
    return value


def detail_settings(config):
    """FusionDetail of config.model.detail_gain and detail_levels, checked."""
    gain, levels = float(config.model.detail_gain), config.model.detail_levels
    _require(gain >= 0, "model.detail_gain", "a gain >= 0 (0: the published composition)", gain)
    _require(isinstance(levels, int) and levels >= 1, "model.detail_levels",
             "a whole number of pyramid levels >= 1", levels)
    return FusionDetail(gain=gain, levels=levels)


def loss_settings(config):
    """LossSettings of `config` (config.loss, config.regions_statistics, config.model.compat),
    checked: an invalid value raises UserError naming the field."""
    loss = config.loss
    _require(loss.correlation in similarity.CORRELATIONS, "loss.correlation",
             f"one of {', '.join(similarity.CORRELATIONS)}", loss.correlation)
    for field in ("quality_weights", "luma_quality_weights"):
        _require(len(loss[field]) == 3 and min(loss[field]) >= 0, f"loss.{field}",
                 "3 numbers >= 0 (SSIM, gradient, intensity)", tuple(loss[field]))
    _require(int(loss.mi_bins) >= 2, "loss.mi_bins", "at least 2 bins", loss.mi_bins)
    _require(float(loss.mi_sigma) > 0, "loss.mi_sigma", "a positive width", loss.mi_sigma)
    _require(int(loss.ncc_window) >= 1, "loss.ncc_window", "a positive size", loss.ncc_window)
    _require(int(loss.registration_size) >= 0, "loss.registration_size",
             "0 (the pair's own size) or a side in pixels", loss.registration_size)
    _require(int(loss.diffusion_crop) >= 0, "loss.diffusion_crop",
             "0 (whole pairs) or a side in pixels", loss.diffusion_crop)
    _require(float(loss.similarity_blur) >= 0, "loss.similarity_blur", "a width >= 0 pixels",
             loss.similarity_blur)
    return LossSettings(
        loss_scale=float(loss.loss_scale),
        quality_weights=tuple(float(w) for w in loss.quality_weights),
        luma_quality_weights=tuple(float(w) for w in loss.luma_quality_weights),
        stage_conditions=_flag(loss.stage_conditions, "loss.stage_conditions"),
        mi_bins=int(loss.mi_bins), mi_sigma=float(loss.mi_sigma),
        correlation=str(loss.correlation), ncc_window=int(loss.ncc_window),
        similarity_blur=float(loss.similarity_blur),
        region_statistics=regions.statistics_from_config(config),
        registration_pass=(_flag(loss.registration_pass, "loss.registration_pass")
                           and not config.model.compat),
        registration_size=int(loss.registration_size),
        diffusion_crop=int(loss.diffusion_crop), detail=detail_settings(config))


def refinement_settings(config):
    """refinement.Refinement of config.sampling.refine_steps / refine_learning_rate /
    refine_strain / refine_from_no_warp, on model.deformation_grid control points (5 for a
    per-pixel head), with the loss's similarity (`loss_settings`) and reference weights
    (config.loss.weights)."""
    sampling, loss = config.sampling, loss_settings(config)
    steps, rate = int(sampling.refine_steps), float(sampling.refine_learning_rate)
    strain = float(sampling.refine_strain)
    _require(steps >= 0, "sampling.refine_steps", "a number of steps >= 0", steps)
    _require(rate > 0, "sampling.refine_learning_rate", "a positive step (pixels)", rate)
    _require(strain >= 0, "sampling.refine_strain", "a weight >= 0", strain)
    return refinement.Refinement(
        steps=steps, learning_rate=rate, grid=int(config.model.deformation_grid) or 5,
        mi_bins=loss.mi_bins, mi_sigma=loss.mi_sigma, correlation=loss.correlation,
        ncc_window=loss.ncc_window, similarity_blur=loss.similarity_blur,
        weights=tuple(float(config.loss.weights[name])
                      for name in ("mi", "correlation", "smoothness", "folding")),
        strain=strain,
        from_no_warp=_flag(sampling.refine_from_no_warp, "sampling.refine_from_no_warp"))


def sampler_settings(config):
    """SamplerSettings of `config` (config.sampling, with the registration pass's size and the
    similarity of config.loss, and config.regions_statistics), checked."""
    sampling = config.sampling
    return SamplerSettings(
        add_noise=_flag(sampling.add_noise, "sampling.add_noise"),
        register=_flag(sampling.register, "sampling.register") and not config.model.compat,
        reflect_channels=tuple(str(channel) for channel in sampling.reflect_channels),
        reflect_offset=float(sampling.reflect_offset),
        statistics=regions.statistics_from_config(config),
        output=_choice(sampling.output, "sampling.output", OUTPUTS),
        known_sources=_flag(sampling.known_sources, "sampling.known_sources"),
        registration_size=loss_settings(config).registration_size,
        refinement=refinement_settings(config),
        warp_interpolation=_choice(sampling.warp_interpolation, "sampling.warp_interpolation",
                                   warping.INTERPOLATIONS),
        stages=_choice(sampling.stages, "sampling.stages", composition.STAGE_SPLITS),
        condition_std=_choice(sampling.condition_std, "sampling.condition_std",
                              regions.CONDITION_STDS),
        color_conversion=_choice(sampling.color_conversion, "sampling.color_conversion",
                                 color.CONVERSIONS),
        truncate_output=_choice(sampling.output_levels, "sampling.output_levels",
                                OUTPUT_LEVELS) == LEVELS_TRUNCATE,
        schedule_precision=_choice(sampling.schedule_precision, "sampling.schedule_precision",
                                   diffusion.TABLE_PRECISIONS),
        chroma=_choice(sampling.chroma, "sampling.chroma", CHROMAS),
        detail=detail_settings(config),
        detail_of_b=_flag(sampling.detail_of_b, "sampling.detail_of_b"))
