"""The classic U-Net (Ronneberger, Fischer and Brox, 2015).

Each level: two 3x3 convolutions, each followed by normalisation and ReLU; 2x2 max-pooling with
stride 2 going down (channels double); a 2x2 transposed convolution going up (channels halve), the
centre-cropped skip connection concatenated, two 3x3 convolutions; a final 1x1 convolution to the
classes. Paper configuration: ``depth=4, width=64, padding="valid", norm="none"`` (31,030,658
parameters for 1 input channel and 2 classes; 31,042,434 with BatchNorm).

Shapes: input ``(N, C_in, H, W)`` float, output ``(N, classes, H', W')`` logits, where ``H'`` is
``geometry.output_size(H)`` (572 -> 388 for valid padding, unchanged for same padding).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from training.errors import OptionError
from training.geometry import Padding, TileGeometry

Norm = Literal["batch", "instance", "none"]


def conv3x3(in_channels: int, out_channels: int, padding: Padding) -> nn.Conv2d:
    """3x3 convolution with bias (the paper's); ``valid`` drops one pixel per side."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1 if padding == "same" else 0)


def norm_layer(kind: Norm, channels: int) -> nn.Module:
    """BatchNorm, InstanceNorm (affine) or identity."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise OptionError(f"norm must be 'batch', 'instance' or 'none', not {kind!r}")


class ConvBlock(nn.Sequential):
    """Two (conv3x3 -> norm -> ReLU) layers: one U-Net level."""

    def __init__(self, in_channels: int, out_channels: int, padding: Padding, norm: Norm) -> None:
        super().__init__(
            conv3x3(in_channels, out_channels, padding),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            conv3x3(out_channels, out_channels, padding),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


def center_crop(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the last two axes of ``tensor`` to ``height x width`` around the centre."""
    top = (tensor.shape[-2] - height) // 2
    left = (tensor.shape[-1] - width) // 2
    return tensor[..., top : top + height, left : left + width]


class Down(nn.Module):
    """2x2 max-pool, stride 2, then a :class:`ConvBlock` doubling the channels."""

    def __init__(self, in_channels: int, out_channels: int, padding: Padding, norm: Norm) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2, stride=2)
        self.block = ConvBlock(in_channels, out_channels, padding, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.pool(x))


class Up(nn.Module):
    """2x2 transposed convolution halving the channels, concatenation with the centre-cropped
    skip connection, then a :class:`ConvBlock`."""

    def __init__(self, in_channels: int, out_channels: int, padding: Padding, norm: Norm) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.block = ConvBlock(2 * out_channels, out_channels, padding, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        skip = center_crop(skip, x.shape[-2], x.shape[-1])
        return self.block(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """The classic U-Net.

    Args:
        in_channels: image channels (1 for grayscale EM, 3 for RGB).
        num_classes: output channels of the final 1x1 convolution (logits).
        depth: number of down-sampling steps (paper: 4).
        width: channels of the first level (paper: 64); level ``i`` has ``width * 2**i``.
        padding: ``"valid"`` (paper, output smaller than input) or ``"same"``.
        norm: ``"batch"`` (default), ``"instance"`` or ``"none"`` (the paper).
        dropout: drop-out probability at the end of the contracting path (paper: used; 0 = off).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        width: int = 64,
        padding: Padding = "valid",
        norm: Norm = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise OptionError(f"depth and width must be >= 1 (got depth={depth}, width={width})")
        self.geometry = TileGeometry(padding=padding, depth=depth)
        channels = [width * 2**i for i in range(depth + 1)]
        self.stem = ConvBlock(in_channels, channels[0], padding, norm)
        self.down = nn.ModuleList(
            Down(channels[i], channels[i + 1], padding, norm) for i in range(depth)
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList(
            Up(channels[i + 1], channels[i], padding, norm) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(channels[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.geometry.check_input(x.shape[-2])
        self.geometry.check_input(x.shape[-1])
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        x = self.dropout(skips.pop())
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x)
