"""`difffccf model-summary`: parameter counts per top-level module, input and output shapes.

Shapes come from jax.eval_shape, so even the paper model is neither allocated nor compiled.
"""

import math

from difffccf_jax.commands.common import add_config_argument, config_from_args


def register(subparsers):
    parser = subparsers.add_parser(
        "model-summary", help="print the network's parameter counts and input/output shapes",
        description="Print the parameter count of every top-level module of the configured "
                    "network, the total, the part that has a counterpart in the published "
                    "PyTorch model, and the input/output shapes at config.data.image_size.")
    add_config_argument(parser)
    parser.add_argument("--batch", type=int, default=1, help="batch size of the shapes shown")
    parser.set_defaults(run=run)


# Top-level modules in data-flow order.
MODULE_ORDER = ("time_embed", "input_conv", "encoder", "middle", "graformer", "noise_decoder",
                "fusion_decoder", "noise_head", "mask1_head", "mask2_head", "deformation_head")


def _count(tree):
    import jax
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _describe(struct):
    return f"{list(struct.shape)} {struct.dtype}"


def run(args):
    import jax
    import jax.numpy as jnp

    from difffccf_jax.model import published_mapping, unet
    from difffccf_jax.errors import UserError

    config = config_from_args(args)
    if args.batch < 1:
        raise UserError(f"--batch: expected a positive batch size, got {args.batch}")
    model = unet.model_from_config(config.model)
    size = config.data.image_size
    params = jax.eval_shape(lambda key: unet.init_params(model, key, size, args.batch),
                            jax.random.key(0))
    x = jax.ShapeDtypeStruct((args.batch, size, size, model.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((args.batch,), jnp.int32)
    outputs = jax.eval_shape(lambda p, x, t: model.apply({"params": p}, x, t), params, x, t)
    published = sum(math.prod(entry.shape)
                    for entry in published_mapping.published_mapping(params))

    rows = [(name, _count(params[name])) for name in MODULE_ORDER if name in params]
    width = max(len(name) for name, _ in rows + [("published model", 0)])
    print(f"model of {args.config} (compat {model.compat}, compute dtype "
          f"{jnp.dtype(model.dtype).name}, parameters float32)")
    print(f"{'module':<{width}}  {'parameters':>12}")
    for name, count in rows:
        print(f"{name:<{width}}  {count:>12,}")
    print(f"{'total':<{width}}  {_count(params):>12,}")
    print(f"{'published model':<{width}}  {published:>12,}  "
          f"(tensors with a counterpart in the published network)")
    print(f"input   x {_describe(x)}, t {_describe(t)}")
    for name, struct in outputs._asdict().items():
        print(f"output  {name} {_describe(struct)}")
