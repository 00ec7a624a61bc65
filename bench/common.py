"""What the benchmark scripts share: the built-in data sets (from real_data) and peak memory."""

from __future__ import annotations

import resource

from real_data import FASHION_CLASSES, fashion_mnist, write_image_tree

__all__ = ["FASHION_CLASSES", "fashion_mnist", "peak_memory_gb", "write_image_tree"]


def peak_memory_gb() -> float:
    """Peak resident memory of this process and its finished children, in GB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024**2
