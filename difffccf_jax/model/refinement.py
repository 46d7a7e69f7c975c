"""The sampler's test-time refinement of the network's field (docs/method.md section 7):
`Refinement` (its settings), `registration_loss` (training's registration terms plus the
regularisers and a strain term) and `refine_field` (Adam steps on a control grid, per pair).
Inference calls it; training does not.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from difffccf_jax.model.control_grid import field_to_grid, grid_to_field
from difffccf_jax.model.registration import registration_terms
from difffccf_jax.model.regularisers import folding_penalty, smoothness, strain_energy


@dataclasses.dataclass(frozen=True)
class Refinement:
    """How the sampler refines the registration pass's field (hashable; a static argument;
    built by `settings.refinement_settings`).

    steps: Adam steps (0: the network's field as it is); learning_rate: Adam's step, pixels per
    step on the control points; grid: control points a side (`field_to_grid`); mi_bins,
    mi_sigma, correlation, ncc_window, similarity_blur: the similarity, as training's
    (settings.LossSettings's fields of the same names); weights: (mi, correlation, smoothness,
    folding), training's reference weights; strain: the weight of the field's strain energy
    (`registration_loss`), the refinement's own term; from_no_warp: also refine from no warp
    and keep, per pair, the refined field of lower loss (`refine_field`)."""
    steps: int
    learning_rate: float
    grid: int
    mi_bins: int
    mi_sigma: float
    correlation: str
    ncc_window: int
    similarity_blur: float
    weights: tuple
    strain: float
    from_no_warp: bool


def registration_loss(a, b, field, settings):
    """The unsupervised registration loss of `field` [B, H, W, 2] per pair, [B]: training's
    terms (`registration_terms`, smoothness, folding) weighted by settings.weights
    (mi, correlation, smoothness, folding), plus settings.strain times the strain energy of
    linear elasticity: the mean over pixels of |sym grad u|^2 = (du_x/dx)^2 + (du_y/dy)^2
    + (du_x/dy + du_y/dx)^2 / 2 (forward differences). It is 0 for a translation and for a
    rotation to first order (u = theta (-y, x)), 2 s^2 for a scaling by 1 + s and g^2 / 2 for a
    shear u = (g y, 0): it holds the field near a rigid motion without penalising rotation,
    which the smoothness term penalises like a scaling. `settings` a `Refinement`."""
    w_mi, w_correlation, w_smoothness, w_folding = settings.weights
    mi, correlation = registration_terms(a, b, field, settings)
    return (w_mi * mi + w_correlation * correlation + w_smoothness * smoothness(field)
            + w_folding * folding_penalty(field) + settings.strain * strain_energy(field))


def refine_field(a, b, field, settings):
    """The field [B, H, W, 2] refined for each pair by `settings.steps` Adam steps on the
    unsupervised registration loss (`registration_loss`: training's terms, `registration_terms`
    plus the weighted smoothness and folding, and the strain term), starting from `field`
    projected onto settings.grid x settings.grid control points (instance optimisation, as ANTs
    optimises a pair and VoxelMorph refines its prediction). a [B, H, W, 1], b YCrCb
    [B, H, W, 3]; each pair's points see only its own loss.

    With settings.from_no_warp it also refines each pair from no warp, in the same batch, and
    keeps the refined field of lower loss, as ANTs tries several initial transforms and keeps
    the best metric: a network field that starts the optimisation in a worse basin than the
    pair as given then does no harm, for twice the time."""
    if not settings.from_no_warp:
        return _refine_from(a, b, field, settings)
    pairs = field.shape[0]
    a2, b2 = jnp.concatenate([a, a]), jnp.concatenate([b, b])
    refined = _refine_from(a2, b2, jnp.concatenate([field, jnp.zeros_like(field)]), settings)
    loss = registration_loss(a2, b2, refined, settings)
    keep_network_start = (loss[:pairs] <= loss[pairs:])[:, None, None, None]
    return jnp.where(keep_network_start, refined[:pairs], refined[pairs:])


def _refine_from(a, b, field, settings):
    """`refine_field` from the one start `field`."""
    height, width = a.shape[1:3]

    def objective(control):
        return jnp.sum(registration_loss(a, b, grid_to_field(control, height, width), settings))

    optimizer = optax.adam(settings.learning_rate)

    def step(carry, _):
        control, state = carry
        updates, state = optimizer.update(jax.grad(objective)(control), state)
        return (control + updates, state), None

    control = field_to_grid(field, settings.grid)
    (control, _), _ = jax.lax.scan(step, (control, optimizer.init(control)), None,
                                   length=settings.steps)
    return grid_to_field(control, height, width)
