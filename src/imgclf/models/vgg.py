"""VGG-10 of the reference study: 3 × (Conv → Conv → MaxPool) → Dense → Dense (≈403K parameters)."""

import torch
from torch import nn

from imgclf.models.layers import PooledFlatten


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3×3 same-padded convolution, BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class VGG10(nn.Module):
    """Six 3×3 convolutions in three pooled stages (32, 64, 128 channels), then a small dense head.

    The hidden dense width (56) sizes the network to the reference's 403K parameters. At 32 px the last map is 4×4 and
    flattened as in the reference; at other sides it is average-pooled to 4×4 first (:class:`PooledFlatten`).
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, widths=(32, 64, 128), hidden: int = 56, dropout=0.3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [conv_bn_relu(c, w), conv_bn_relu(w, w), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            PooledFlatten(4),  # exactly Flatten at 32 px
            nn.Dropout(dropout),
            nn.Linear(c * 4 * 4, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
