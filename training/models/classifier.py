"""CNN backbones as image classifiers: an smp encoder, global average pooling and a linear head.

This is the transfer-learning workflow of Keras' ``include_top=False``: train the backbone as a
classifier (``tessera train-classifier``), then start a segmentation model's encoder from it
(``encoder_weights: path/to/classifier.safetensors``). The classifier's encoder tensors are saved
under ``encoder.*``, exactly the names an smp segmentation model's encoder has.

Shapes: input ``(N, C_in, H, W)``, output ``(N, num_classes)`` logits.
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch.encoders import get_encoder
from torch import nn

from training.errors import OptionError


class Classifier(nn.Module):
    """smp encoder -> global average pool -> dropout -> linear."""

    def __init__(
        self,
        encoder: str = "resnet18",
        in_channels: int = 3,
        num_classes: int = 10,
        encoder_depth: int = 5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        try:
            self.encoder = get_encoder(encoder, in_channels=in_channels, depth=encoder_depth, weights=None)
        except (KeyError, ValueError) as error:
            raise OptionError(f"cannot build classifier with encoder {encoder!r}: {error}") from None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(self.encoder.out_channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)[-1]
        return self.head(self.dropout(torch.flatten(self.pool(features), 1)))
