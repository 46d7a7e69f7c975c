"""Fusing pairs with a trained model: the reverse diffusion sampler and the fuse-a-folder
workflow."""
