"""The reference study's 5-layer baseline: Conv → Pool → Conv → Pool → Dense (≈316K parameters with 10 classes).

At 32 px the shapes are the reference's exactly; at other sides the last 6×6 map is average-pooled from whatever size
it has (:class:`PooledFlatten`), so the dense layers and the parameter count stay the same.
"""

from torch import nn

from imgclf.models.layers import PooledFlatten


class SimpleCNN(nn.Sequential):
    """Two valid 3×3 convolutions with max-pooling, then a 128-unit dense layer (Keras-style baseline)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 32, 3),  # 32×32 → 30×30
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # → 15×15
            nn.Conv2d(32, 64, 3),  # → 13×13
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # → 6×6
            PooledFlatten(6),  # exactly Flatten at 32 px
            nn.Dropout(dropout),
            nn.Linear(64 * 6 * 6, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )
