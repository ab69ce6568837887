"""Model adapters: the one place that knows a model family.

* :mod:`.tensors`: which tensors are compressible and their layout (the list of layer types);
* :mod:`brainsurgeon.losses`: the loss on a batch, by name or callable.
"""

from . import tensors
from .tensors import *  # noqa: F403  (the adapter's public names, listed once in tensors)

__all__ = list(tensors.__all__)
