"""difffccf-jax: Diff-FCCF (diffusion full-colour channel fusion) in JAX/Flax.

Importing the package is cheap: heavy libraries (tfds, orbax, torch, matplotlib) are imported by
the modules that use them.
"""

__version__ = "0.1.0"
