"""The reference study's 5-layer baseline: Conv → Pool → Conv → Pool → Dense (≈316K parameters)."""

from torch import nn


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
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(64 * 6 * 6, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )
