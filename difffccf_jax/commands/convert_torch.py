"""`difffccf convert-torch`: imports a published-format PyTorch state dict as a checkpoint.

    difffccf convert-torch --state-dict model.pt --config configs/paper.py --out CKPT

The state dict (`torch.save(model.state_dict(), 'model.pt')` of the published network, or of
difffccf_jax.model.torch_port) must hold exactly the tensors of the model the config describes, with
their published shapes; anything missing, unexpected or mis-shaped is refused by name. Published
weights only mean something in the compatibility mode, so the checkpoint's config has
model.compat = True. `fuse` and `train` accept the written checkpoint. Needs the `torch` extra.
"""

import os

from difffccf_jax.commands.common import add_config_argument, config_from_args
from difffccf_jax.errors import UserError


def register(subparsers):
    parser = subparsers.add_parser(
        "convert-torch", help="import published PyTorch weights into a checkpoint",
        description="Convert a published-format PyTorch state dict (.pt of tensors) into a "
                    "params-only checkpoint (model.compat = True) for fuse and train.")
    parser.add_argument("--state-dict", required=True, metavar="FILE",
                        help="a .pt file holding the state dict (name -> tensor)")
    add_config_argument(parser)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="checkpoint directory to create (must be new or empty)")
    parser.set_defaults(run=run)


def read_state_dict(path):
    """{name: float32 NumPy array} from a .pt file of tensors (loaded with weights_only)."""
    try:
        import torch
    except ImportError as error:
        raise UserError("convert-torch needs PyTorch: pip install -e '.[torch]'") from error
    if not os.path.isfile(path):
        raise UserError(f"state dict file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for unreadable or unsafe files
        raise UserError(f"{path} is not a PyTorch file of tensors readable with "
                        f"weights_only=True: {error}") from error
    if not isinstance(state, dict) or not all(
            isinstance(value, torch.Tensor) for value in state.values()):
        raise UserError(f"{path} must hold a state dict (a dict of name -> tensor, as written "
                        f"by torch.save(model.state_dict())), got {type(state).__name__}")
    return {name: tensor.detach().to(torch.float32).numpy() for name, tensor in state.items()}


def convert(state_dict, config):
    """(compat config, NumPy params) of our UNet from a published state dict {name: array}."""
    from difffccf_jax.model import checkpoints, published_mapping

    config = config.copy_and_resolve_references()
    config.model.compat = True
    template = checkpoints.expected_params(config)
    return config, published_mapping.params_from_published(state_dict, template)


def run(args):
    from difffccf_jax.model import checkpoints

    config, params = convert(read_state_dict(args.state_dict), config_from_args(args))
    checkpoints.write_params_checkpoint(args.out, config, params)
    print(f"converted {args.state_dict} into checkpoint {args.out} (model.compat = True)")
