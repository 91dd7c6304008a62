"""Tile geometry: the exact size arithmetic of a segmentation network.

Every consumer (training patches, the tiler, the service, batch jobs) asks this module which input
sizes a model takes, how many pixels it loses per side and on which grid tiles must start.

Conventions
-----------
* Sizes are in pixels along one axis; the same rule applies to height and width.
* ``depth`` is the number of 2x down-samplings, so ``stride = 2**depth``. Max-pooling makes a
  network translation-equivariant only for shifts that are multiples of the stride: tiles that
  must reproduce a whole-image pass start on that grid.
* ``padding="valid"`` is the 2015 paper: every 3x3 convolution drops one pixel per side, the output
  is smaller than the input by ``2 * margin``. ``padding="same"`` keeps the size (input must be a
  multiple of the stride) and ``margin`` is 0; the context a tile needs is then ``halo`` (measured
  from the network's impulse response, see :func:`training.models.measure_halo`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from training.errors import OptionError, TesseraError

Padding = Literal["valid", "same"]

#: Pixels one valid 3x3 convolution removes per side.
CONV_LOSS = 1
#: Convolutions per U-Net level (the paper: two 3x3 convolutions).
CONVS_PER_LEVEL = 2
#: Pixels one level's convolution block removes from a size (both sides, all convolutions).
LEVEL_LOSS = 2 * CONV_LOSS * CONVS_PER_LEVEL


class InvalidSizeError(TesseraError):
    """An input size the network cannot take; the message names the nearest valid sizes."""


@dataclass(frozen=True)
class TileGeometry:
    """Size arithmetic for a U-Net-shaped network.

    Attributes:
        padding: ``"valid"`` (unpadded convolutions, output smaller) or ``"same"``.
        depth: number of 2x down-samplings (paper: 4).
        halo: context in pixels per side that a tile needs beyond the pixels it outputs. For valid
            padding this is ``margin`` (more when outputs are moved after the network, as the
            predictor's corrected test-time augmentation does); for same padding it is the
            measured receptive border.
        kind: ``"unet"`` for the classic U-Net arithmetic, ``"stride"`` for networks whose only
            constraint is that sizes are multiples of the stride (segmentation-models-pytorch).
    """

    padding: Padding
    depth: int
    halo: int = -1
    kind: Literal["unet", "stride"] = "unet"

    def __post_init__(self) -> None:
        if self.padding not in ("valid", "same"):
            raise OptionError(f"padding must be 'valid' or 'same', not {self.padding!r}")
        if self.padding == "valid" and self.kind != "unet":
            raise OptionError("valid padding is only defined for the classic U-Net")
        if self.depth < 0:
            raise OptionError(f"depth must be >= 0, not {self.depth}")
        if self.halo < 0:
            object.__setattr__(self, "halo", self.margin)

    # ----------------------------------------------------------------- basic quantities
    @property
    def stride(self) -> int:
        """Tiles must start on multiples of this (2**depth) to reproduce a whole-image pass."""
        return 2**self.depth

    @property
    def margin(self) -> int:
        """Pixels lost per side by valid convolutions (paper configuration: 92); 0 for same."""
        if self.padding == "same":
            return 0
        return (self._input_for_bottleneck(0) - self._output_for_bottleneck(0)) // 2

    @property
    def context(self) -> int:
        """Input pixels per side a tile reads beyond the pixels it outputs (the halo, never less
        than the margin)."""
        return max(self.margin, self.halo)

    # ----------------------------------------------------------------- valid-padding algebra
    # A valid U-Net is fully described by the size b of its bottleneck output: the input is
    # 2**d * b + LEVEL_LOSS * (2**(d+1) - 1), the output 2**d * b - LEVEL_LOSS * (2**d - 1).
    def _input_for_bottleneck(self, b: int) -> int:
        return self.stride * b + LEVEL_LOSS * (2 * self.stride - 1)

    def _output_for_bottleneck(self, b: int) -> int:
        return self.stride * b - LEVEL_LOSS * (self.stride - 1)

    @property
    def min_input(self) -> int:
        """Smallest valid input size (paper configuration: 188, giving a 4 px output)."""
        if self.padding == "same":
            return self.stride
        b = 1
        while self._output_for_bottleneck(b) < 1:
            b += 1
        return self._input_for_bottleneck(b)

    def is_valid_input(self, size: int) -> bool:
        """True when ``size`` passes through every pooling evenly and leaves an output >= 1 px."""
        if size < self.min_input:
            return False
        if self.padding == "same":
            return size % self.stride == 0
        return (size - self.min_input) % self.stride == 0

    def valid_inputs_near(self, size: int, count: int = 2) -> list[int]:
        """Valid sizes around ``size``, ascending: ``count`` at or below it, ``count`` above it."""
        k = (size - self.min_input) // self.stride
        steps = range(k - count + 1, k + count + 1)
        return [self.min_input + i * self.stride for i in steps if i >= 0]

    def check_input(self, size: int) -> None:
        """Raise :class:`InvalidSizeError` naming the nearest valid sizes when ``size`` is invalid."""
        if not self.is_valid_input(size):
            near = self.valid_inputs_near(size)
            rule = (
                f"{self.min_input} + {self.stride}k"
                if self.padding == "valid"
                else f"a multiple of {self.stride}"
            )
            raise InvalidSizeError(
                f"input size {size} is not valid for this network ({self.padding} padding, depth "
                f"{self.depth}): valid sizes are {rule}; nearest: {', '.join(map(str, near))}"
            )

    def output_size(self, input_size: int) -> int:
        """Output size for a valid input size (paper configuration: 572 -> 388)."""
        self.check_input(input_size)
        return input_size - 2 * self.margin

    def input_size_for(self, output_size: int) -> int:
        """Smallest valid input whose output covers ``output_size`` pixels (388 -> 572)."""
        if output_size < 1:
            raise InvalidSizeError(f"output size must be >= 1, not {output_size}")
        size = self.min_input
        if size - 2 * self.margin < output_size:
            steps = -(-(output_size + 2 * self.margin - size) // self.stride)
            size += steps * self.stride
        return size

    def tile_step(self, input_size: int) -> int:
        """Image pixels one tile of ``input_size`` contributes: its usable output rounded down to
        the stride, so that consecutive tiles stay on the stride grid (exactness)."""
        usable = self.output_size(input_size) - 2 * (self.context - self.margin)
        step = usable - usable % self.stride
        if step < self.stride:
            need = self.input_size_for(2 * (self.context - self.margin) + self.stride)
            raise InvalidSizeError(
                f"tile input {input_size} leaves no usable output with a halo of {self.context} px; "
                f"use at least {need}"
            )
        return step

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TileGeometry:
        return cls(**{k: data[k] for k in ("padding", "depth", "halo", "kind") if k in data})
