"""CIFAR ResNets of He et al. 2016, §4.2: 6n+2 layers, 16/32/64 channels, identity (option A) shortcuts.

ResNet-20 (n=3) has 0.27M parameters, ResNet-56 (n=9) 0.85M, ResNet-110 (n=18) 1.7M — as in the paper's Table 6.
"""

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a parameter-free shortcut (stride-2 subsampling and zero-padded channels)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        shortcut = x
        if self.stride != 1 or self.pad:
            shortcut = x[:, :, :: self.stride, :: self.stride]
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(self.bn2(self.conv2(out)) + shortcut, inplace=True)


class CifarResNet(nn.Module):
    """ResNet-(6n+2): conv → 3 stages of n blocks → global average pool → linear (any input side; the paper's 32)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.stem = nn.Sequential(stem, nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        c = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(BasicBlock(c, width, stride=2 if stage > 0 and i == 0 else 1))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))
