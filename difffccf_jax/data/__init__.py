"""Paired data: a generator of realistic pairs, loaders for the five published layouts, a
tensorflow-datasets builder and the input pipeline that feeds sharded batches to training.

Data flows one way: image files -> uint8 arrays (grey A, RGB B) -> [-1, 1] float32 arrays
(a [N, H, W, 1], b [N, H, W, 3] in YCrCb) -> global batches on the device mesh.
"""
