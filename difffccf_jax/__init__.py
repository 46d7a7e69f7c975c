"""difffccf-jax: Diff-FCCF (diffusion full-colour channel fusion) in JAX/Flax.

Importing the package is cheap: heavy libraries (tfds, orbax, torch, matplotlib) are imported by
the modules that use them.
"""

__version__ = "0.1.0"


def __getattr__(name):
    """`difffccf_jax.Fuser` (inference/fuser.py), imported on first use: it imports JAX."""
    if name == "Fuser":
        from difffccf_jax.inference.fuser import Fuser  # pylint: disable=import-outside-toplevel

        return Fuser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
