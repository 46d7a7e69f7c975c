"""Overlapping slow steps (file decoding and encoding) with the main thread's work."""

import collections
from concurrent import futures


def ordered_map(function, items, workers, depth):
    """Yields function(item) for the items in their order, computed in `workers` threads at
    most `depth` items ahead of the consumer, so at most depth results are held at once. An
    exception of `function` is raised where its result would have been yielded."""
    with futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
