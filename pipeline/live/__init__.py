"""Analysis while the camera runs.

- :mod:`pipeline.live.locate`: the locate stage's features computed during
  the acquisition, from the store's shards as they are written, and adopted
  by the locate stage when they are exactly what it would compute
  (``acquire.live_locate``).
- :mod:`pipeline.live.preview`: ``trackflow preview``, particles per frame,
  tracks linked online and the size distribution so far, in the terminal
  and on a page served on loopback, from the acquisition's PUB socket.

Unlike the stage modules, which meet only through files, this package runs
several stages' public functions together (locate, link's filters, size's
estimator), on frames as they come.
"""

from .locate import adopt_live_features, live_features_path, live_locate, locate_or_adopt

__all__ = ["adopt_live_features", "live_features_path", "live_locate", "locate_or_adopt"]
