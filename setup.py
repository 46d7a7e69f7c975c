"""Installs difffccf-jax: `pip install -e .` (core) or `pip install -e '.[test]'`."""

from setuptools import find_packages, setup

setup(
    name="difffccf-jax",
    version="0.1.0",
    description=(
        "Diff-FCCF in JAX/Flax: unsupervised multi-task diffusion fusion of anatomical and "
        "functional medical images, with registration and denoising."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["difffccf_jax", "difffccf_jax.*"]),
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.10",
        "tensorflow-datasets>=4.9.7",
        "array_record>=0.5",
        "numpy>=1.26",
        "scipy>=1.11",  # metrics.py (also a dependency of jax)
        "chex>=0.1.87",
        "ml-collections>=0.1.1",
        "pillow>=10.0",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "submitit>=1.5",  # sweeps on SLURM and here (tools/sweeps.py)
        # the generator's template anatomy: the MNI152 template ships in nilearn's wheel and is
        # read with nibabel (docs/data.md)
        "nilearn>=0.10.3",
        "nibabel>=5.2",
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.5"],
        "torch": ["torch==2.13.0"],
    },
    entry_points={"console_scripts": ["difffccf=difffccf_jax.cli:main"]},
)
