"""The network and what defines it: the U-Net with its graph bottleneck, the diffusion schedule,
the region rules, the deformation warp, the masked composition of the two sources, the published
parameter mapping and the PyTorch port, and checkpoints of trained parameters."""
