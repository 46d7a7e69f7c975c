"""The published Diff-FCCF settings (docs/method.md sections 3-8).

    difffccf train --config configs/paper.py --workdir runs/paper --config.data.root=DATA

`configs/paper.py:compat` is the published model and the published sampling loop together;
`configs/paper.py:published_sampling` (or `configs/tiny.py:published_sampling`) only the loop,
for any network (PUBLISHED_SAMPLING).
"""

import ml_collections

TASKS = ("pet", "spect", "ct", "gfp", "adni")

# The sampler settings that make it the published loop (docs/method.md section 6): its stage
# boundaries, A's standardisation, OpenCV's 8-bit colour conversions, truncation to uint8, float32
# schedule tables, the trajectory output, the chroma runs' Cr/Cb, sources from their clipped x0
# estimates, no registration pass, deterministic, no detail band of B.
PUBLISHED_SAMPLING = dict(stages="published", condition_std="published",
                          color_conversion="opencv8", output_levels="truncate",
                          schedule_precision="float32", output="trajectory", known_sources=False,
                          register=False, add_noise=False, chroma="fused", detail_of_b=False)
ARGS = ("compat", "published_sampling")


def _layout(folder, a, b, b_is_color, jet, alternates=()):
    """One task's folder, its A and B sub-folders, whether B files are colour, whether grey B
    images are JET-mapped, and other accepted "A:B" sub-folder spellings."""
    return ml_collections.ConfigDict(
        dict(folder=folder, a=a, b=b, b_is_color=b_is_color, jet=jet, alternates=alternates))


def _rule(kind, threshold, above, sign, gain=1.0):
    """A region rule of one phase: `kind` 'percentile' (threshold in percent, per image) or
    'background' (threshold times the value of a reference pixel near the top-left corner);
    `above` keeps values >= the threshold, otherwise values <= it; `sign` (+1 / -1) and `gain`
    of A in the fused chroma, F = B_c + sign * gain * m2 * A inside the region."""
    return ml_collections.ConfigDict(dict(kind=kind, threshold=float(threshold), above=above,
                                          sign=float(sign), gain=float(gain)))


def _region(train, sample):
    return ml_collections.ConfigDict(dict(train=train, sample=sample))


def regions():
    """Per task and chroma channel, the training and the sampling rule of docs/method.md
    section 5 (rule, sign, gain): the published training branches and sampler use different
    ones, e.g.

        --config.regions.pet.cr.sample.sign=-1   (sample PET Cr with the training sign)

    Entries the published sampler does not have default to the training ones: the ADNI sampling
    rules and signs, the CT sampling regions (its published sampling signs are used)."""
    pct = lambda q, above, sign, gain=1.0: _rule("percentile", q, above, sign, gain)  # noqa: E731
    bg = lambda r, above, sign, gain=1.0: _rule("background", r, above, sign, gain)  # noqa: E731
    return ml_collections.ConfigDict(dict(
        spect=dict(cr=_region(train=pct(70, True, +1), sample=pct(95, True, +1)),
                   cb=_region(train=pct(30, False, -1), sample=pct(7, False, -1))),
        # not published for sampling: the training rules, signs and gains
        adni=dict(cr=_region(train=pct(70, True, +1), sample=pct(70, True, +1)),
                  cb=_region(train=pct(30, False, -1), sample=pct(30, False, -1))),
        # sampling regions not published (the training ones); sampling signs published
        ct=dict(cr=_region(train=pct(15, False, -1), sample=pct(15, False, -1)),
                cb=_region(train=pct(85, True, +1), sample=pct(85, True, -1))),
        gfp=dict(cr=_region(train=pct(7, False, -1, 0.45), sample=pct(6.5, False, +1)),
                 cb=_region(train=pct(7, False, -1, 0.45), sample=pct(6.5, False, +1))),
        pet=dict(cr=_region(train=bg(10, True, -1), sample=bg(10, True, +1)),
                 cb=_region(train=bg(-100, False, -1), sample=bg(-100, False, +1))),
    ))


def get_config(arg=None):
    """The paper settings; arg 'compat': with the published model (model.compat) and sampling
    loop; 'published_sampling': with the published sampling loop only."""
    if arg not in (None, *ARGS):
        raise ValueError(f"configs/paper.py: expected no argument or one of {', '.join(ARGS)}, "
                         f"got {arg!r}")
    config = ml_collections.ConfigDict()
    config.version = 4  # the layout of this config (config_versions.VERSION)
    config.seed = 0

    config.data = ml_collections.ConfigDict(dict(
        root="",  # folder holding one sub-folder per task (the published layout)
        # Training draws one of these tasks per epoch (a single task: single-task training);
        # the first is fusion's default task.
        tasks=TASKS,
        image_size=256,
        crop_size=0,  # 0: train on whole pairs; else the side of random square training crops
        batch_size=4,  # global batch
        shuffle_seed=0,
        eval_root="",  # held-out pairs a sweep run is scored on; "" scores the root's pairs
        # A tfds array_record cache of the pairs, read at random (data/pipeline.py); "" reads the
        # image folders into memory, or in a multi-process run caches them in WORKDIR/data_cache.
        tfds_dir="",
        layouts=dict(
            pet=_layout("HARVARD-PET-MRI", "MRI", "PET", True, False),
            spect=_layout("HARVARD-SPECT-MRI", "MRI", "SPECT", True, False),
            ct=_layout("HARVARD-CT-MRI", "CT", "MRI", False, True),
            # The reference loader reads t/g, its README shows g/f (phase contrast/GFP).
            gfp=_layout("GFP", "t", "g", True, False, alternates=("g:f",)),
            adni=_layout("ADNI", "MRI", "PET", False, True),
        ),
    ))

    config.model = ml_collections.ConfigDict(dict(
        in_channels=4,
        model_channels=64,
        channel_mult=(1, 2, 4, 8),
        num_res_blocks=2,
        dropout=0.1,
        time_embed_mult=4,
        norm_groups=32,
        norm_eps=1e-5,
        attention_reduction=8,
        graph_heads=4,
        graph_ffn_width=256,
        cheb_order=3,
        # 'scaled' (2 L / lambda_max - I, lambda_max the grid's exact largest eigenvalue) or
        # 'unnormalized' (L = D - A, the reference)
        laplacian="scaled",
        # pixels of the registration pass's input (loss.registration_size), the tanh bound of the
        # deformation head's control points
        max_displacement=4.0,
        # The deformation head's field: G x G control points (the least-squares projection of
        # its per-pixel output, bilinear between them; affine fields exactly), or 0 for a field
        # per pixel (docs/method.md section 7).
        deformation_grid=5,
        # The deformation head's own encoder (unet.RegistrationBranch: stride-2 convolutions of
        # these widths on the registration pass's input); () for a head on the fusion decoder,
        # which learnt no per-pair field beside the noise and quality terms (docs/method.md
        # section 7).
        deformation_features=(16, 32, 32, 32),
        # Slope of m1's logit offset mask_prior * (x_t^A - x_t^B) (unet.luma_mask_prior): an
        # untrained network starts as a soft maximum rule instead of learning the selection from
        # scratch. 0 is the published m1 (docs/method.md, deviations).
        mask_prior=40.0,
        # The detail path of the clean fused Y: detail_gain times A's detail band (A minus its
        # low frequencies below detail_levels Laplacian-pyramid levels) added where B is kept,
        # (1 - m1), in training's clean estimate and in the sampler's clean output, so that
        # the anatomy's structure survives inside B's uptake (docs/method.md, deviations).
        # 0 is the published composition.
        detail_gain=0.2,
        detail_levels=4,
        # True reproduces the published model exactly (docs/method.md section 3, compat quirks;
        # needs a 32 x 32 x 512 bottleneck) and implies laplacian 'unnormalized', norm_eps 1e-5,
        # deformation = [m1, m2]
        compat=False,
        dtype="float32",  # compute dtype; parameters stay float32
    ))

    config.diffusion = ml_collections.ConfigDict(dict(
        steps=2000,
        schedule="cosine",  # or 'linear'
    ))

    config.loss = ml_collections.ConfigDict(dict(
        loss_scale=128.0,
        quality_weights=(30.0, 40.0, 40.0),  # SSIM term, gradient term, intensity term
        # The Y rows' weights. With the published ones the quality loss prefers a copy of A to the
        # maximum rule on generated PET/MRI pairs (docs/method.md, deviations): the SSIM term
        # SSIM(F, A) + SSIM(F, B) is highest for F = A when A carries most of the structure.
        luma_quality_weights=(0.0, 10.0, 40.0),
        # Train each row with the conditions the hierarchical sampler gives its noise level
        # ((B, B), (A, B), (A, A) by thirds); the published training always shows (A, B), so the
        # masks of the sampler's last third ((A, A)) were never trained.
        stage_conditions=True,
        mi_bins=32,
        mi_sigma=0.5,  # Parzen kernel width in bins
        # The second similarity term: 'ratio' (correlation ratio), 'ncc' (local NCC) or 'mind'
        # (MIND descriptors): MI and the correlation ratio prefer B enlarged by 1-2 % on
        # generated pairs, MIND does not (docs/method.md section 7).
        correlation="mind",
        ncc_window=9,
        # Gaussian blur (pixels) of A and B before MI and correlation: without it the smoothing
        # of bilinear interpolation rewards sub-pixel shifts of a noisy B whatever the alignment.
        similarity_blur=1.0,
        # The registration terms score the field of a pass of the network on the clean pair at
        # t = 0 ([A, B_Y, A, B_Y]), the field the sampler warps B with, shrunk to
        # registration_size pixels a side (0: the pair's size); the sampler reads both.
        registration_pass=True,
        registration_size=64,
        # > 0: the diffusion rows train on random windows of this side, while the registration
        # pass sees the whole pair (on a CPU; data.crop_size crops both).
        diffusion_crop=0,
        # Reference weights; the adaptive policy (config.weighting) adjusts them. Smoothness
        # and folding are this project's terms. A per-pixel field optimised for MI + correlation
        # ratio needs smoothness 30 not to deform B towards A's look (tests/test_losses.py); on
        # the control grid with MIND, 3 realigns best (docs/method.md section 7).
        weights=dict(noise=10.0, mi=1.0, correlation=1.0, fusion=1.0, quality=10.0,
                     smoothness=3.0, folding=1.0),
    ))

    config.regions = regions()
    # Re-standardisation of the fused chroma (training's clean fused estimate and the sampler's
    # post-step, both): 'whole_frame', the published moment matching of the masked images over
    # the whole frame, or 'in_region', B_c's mean and std over the region's pixels
    # (docs/method.md section 5).
    config.regions_statistics = "whole_frame"

    config.weighting = ml_collections.ConfigDict(dict(
        enabled=True,
        reference_decay=0.95,
        initial_references=dict(noise=10.0, mi=1e5, correlation=1e6, fusion=1e3, quality=1e4,
                                smoothness=1.0, folding=1.0),
        policy_learning_rate=1e-2,
        baseline_decay=0.9,
        std_explore=0.3,
        std_stable=0.05,
        entropy_explore=1e-2,
        entropy_stable=1e-4,
        explore_fraction=0.3,  # share of training in the exploration phase
        trust_bound=0.1,  # initial max change of a log-weight per step
        trust_bound_min=1e-3,  # the bound adapts (x1.1 / x0.9) within these limits
        trust_bound_max=1.0,
        trend_window=100,  # rewards whose trend adapts the trust bound
        loss_trend_window=10,  # recent total losses whose mean slope enters the reward
        # Every applied weight stays within [min_factor, max_factor] x its reference weight
        # (this project's bound: the published policy has none, see weighting.py).
        min_factor=0.25,
        max_factor=4.0,
    ))

    config.optim = ml_collections.ConfigDict(dict(
        learning_rate=2e-4,
        weight_decay=1e-2,
        decay_rate=0.99,
        decay_every_epochs=1000,
        grad_clip=0.0,  # 0 disables global-norm clipping
        ema_decay=0.0,  # 0 disables the parameter EMA used for sampling
        # The deformation head's learning rate, as a multiple of learning_rate (train_step).
        registration_lr_factor=1.0,
    ))

    config.train = ml_collections.ConfigDict(dict(
        epochs=10000,
        steps_per_epoch=0,  # 0: one pass over the drawn task's data per epoch
        checkpoint_every_epochs=100,
        keep_checkpoints=3,
        log_every_steps=50,
        distributed=False,  # call jax.distributed.initialize() (also when SLURM asks for it)
        init_params="",  # a checkpoint directory whose parameters start training (convert-torch)
        fast_compile=False,  # XLA backend optimisation level 0: ~3x faster compiles on CPU
        # > 0: stop (with a checkpoint) at the first check this long after the first step
        max_minutes=0.0,
        # Also checkpoint when this many minutes passed since the last checkpoint (0: never).
        # Time budget, timed checkpoints and stop signals (SIGTERM, USR1, USR2) are checked
        # every log_every_steps steps and at every epoch end, alike on every process.
        checkpoint_every_minutes=30.0,
    ))

    config.sampling = ml_collections.ConfigDict(dict(
        steps=2000,  # reverse steps; fewer than diffusion.steps gives a respaced schedule
        add_noise=False,  # the paper preset is deterministic
        # Warp B by the registration pass's field before fusing (docs/method.md section 7).
        # Off by default, as in the published sampler, which never applies its field: on pairs
        # that are already aligned, warping only resamples B. `difffccf fuse --register` turns it
        # on; `difffccf registration` measures it on misaligned pairs (README, Registration).
        register=False,
        # Registration: Adam steps of instance optimisation of the network's field on the
        # training loss (refinement.refine_field; 0: the network's field as it is), their
        # step in pixels, and the weight of the refinement's own strain term, which keeps the
        # field near a rigid motion without holding back its rotation (registration_loss):
        # 0.1 px and 100 chosen on validation pairs (docs/method.md section 7 compares them with
        # 0.05 px and no strain term). refine_from_no_warp:
        # also refine from no warp and keep, per pair, the result of lower loss (twice the
        # refinement's time; chosen on the same validation pairs).
        refine_steps=50,
        refine_learning_rate=0.1,
        refine_strain=100.0,
        refine_from_no_warp=True,
        # How the field warps B before fusing: 'bicubic' (Keys) keeps more of B's edges than
        # the 'bilinear' warp of training (docs/method.md section 7: higher SD, SF and SCD on
        # both registration checks' pairs).
        warp_interpolation="bicubic",
        batch_size=4,
        seed=0,  # the key of the initial (and, with add_noise, per-step) noise
        # Chroma channels ("task.channel") whose post-step is x <- offset - x inside the region
        # instead of re-standardising to B_c's statistics (docs/method.md section 6: PET Cr,
        # offset 0.8).
        reflect_channels=("pet.cr",),
        reflect_offset=0.8,
        # The output's Cr and Cb: 'source', B's own (the fused image keeps B's colours), or
        # 'fused', the chroma runs' result as published (the PET Cr reflection shifts B's hues;
        # docs/method.md section 6 measures both).
        chroma="source",
        # 'clean': the Y channel is the clean fused estimate m1 A + (1 - m1) B_Y of the last step
        # (what the quality loss trains); 'trajectory': the reverse run's x, as published, which
        # keeps a few grey levels of sampling noise even where both sources are black.
        output="clean",
        # With the clean output: B's detail band (model.detail_gain times B_Y minus its low
        # frequencies below model.detail_levels levels) also added where A is kept, m1, inside
        # B's functional region (functional_region.py), so that the uptake's structure survives
        # where the anatomy is brighter. In the sampler only: training's clean estimate has A's
        # detail band alone, since a training crop lacks B's background pixel, which defines
        # the region (docs/method.md, deviations).
        detail_of_b=True,
        # x^A and x^B move to their posterior means from their known clean sources instead of
        # the clipped x0 estimate, which loses their difference (sampling.reverse_step).
        known_sources=True,
        # Where the hierarchical stages split the schedule: 'thirds' (stage floor(3 i / N) of
        # reverse step i) or 'published' (the published loop's boundaries, a first stage one
        # step shorter; docs/method.md section 6).
        stages="thirds",
        # A standardised to B_c in the region: 'population' (divides by sqrt(var + 1e-10)) or
        # 'published' (by the unbiased (n - 1) std + 1e-5).
        condition_std="population",
        # B's RGB -> YCrCb when pairs are read and the output's YCrCb -> RGB: 'float' (the
        # formulas, B's YCrCb unrounded) or 'opencv8' (OpenCV's 8-bit routines, as published).
        color_conversion="float",
        # The fused channels to whole levels: 'round', or 'truncate' (the published uint8 cast).
        output_levels="round",
        # The schedule tables computed in 'float64' or, as published, 'float32'.
        schedule_precision="float64",
    ))
    if arg is not None:
        config.sampling.update(PUBLISHED_SAMPLING)
    if arg == "compat":
        config.model.compat = True
        config.model.detail_gain = 0.0
    return config
