"""The paper settings shrunk for a 2-core CPU: 32 px images, 8 base channels, 50 diffusion steps.

    difffccf train --config configs/tiny.py --workdir runs/tiny --config.data.root=DATA
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import paper  # noqa: E402  (configs/ is not a package)


def get_config(arg=None):
    config = paper.get_config(arg)
    config.data.image_size = 32
    config.data.batch_size = 4
    config.data.tasks = ("pet",)

    config.model.model_channels = 8
    config.model.channel_mult = (1, 2, 2, 4)
    config.model.norm_groups = 4
    config.model.attention_reduction = 4
    config.model.graph_heads = 2
    config.model.graph_ffn_width = 32
    config.model.time_embed_mult = 4
    config.model.max_displacement = 3.0
    config.loss.registration_size = 32  # 32 px pairs: as they are

    config.diffusion.steps = 50
    config.loss.mi_bins = 16

    config.optim.learning_rate = 1e-3
    config.optim.registration_lr_factor = 3.0  # the deformation head at 3e-3 (docs/method.md 7)
    config.optim.decay_every_epochs = 100

    config.train.epochs = 20
    config.train.steps_per_epoch = 10
    config.train.checkpoint_every_epochs = 5
    config.train.log_every_steps = 5

    config.sampling.steps = 12
    config.sampling.batch_size = 4
    return config
