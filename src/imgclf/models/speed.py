"""SpeedNet: the airbench94 family of networks (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU"),
built for imgclf's trainer: the ``speed94`` recipe (src/imgclf/configs/speed94.yaml) trains it.

- a frozen 2×2 first convolution whose filters whiten the training images' patches (the eigenvectors of their
  covariance, scaled by 1/√eigenvalue, each with its negative), so the network starts from decorrelated input;
  its bias trains for the first epochs only;
- three groups of conv → max-pool → BatchNorm → GELU → conv → BatchNorm → GELU, widths 64/256/256, convolutions
  initialised as identities on their first channels (Dirac), BatchNorm without a learned scale;
- a global max-pool and a linear classifier whose logits are scaled by 1/9.
"""

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (64, 256, 256)
WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4
WHITEN_IMAGES = 5000  # training images whose patches estimate the covariance
BATCHNORM_MOMENTUM = 0.4  # PyTorch's convention: airbench's 0.6 of the running average kept per step
LOGIT_SCALE = 1 / 9
BIAS_LR_SCALE = 64.0  # BatchNorm biases learn this many times faster than the weights, decayed as much per step


class ScalelessBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1 (not trained): only the shift learns."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-12, momentum=BATCHNORM_MOMENTUM)
        self.weight.requires_grad_(False)


def dirac_conv(c_in: int, c_out: int, kernel: int = 3) -> nn.Conv2d:
    """A bias-free 'same' convolution whose first ``c_in`` filters start as identities."""
    conv = nn.Conv2d(c_in, c_out, kernel, padding="same", bias=False)
    nn.init.dirac_(conv.weight.data[:c_in])
    return conv


class ConvGroup(nn.Sequential):
    """conv → 2×2 max-pool → BatchNorm → GELU → conv → BatchNorm → GELU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            dirac_conv(c_in, c_out),
            nn.MaxPool2d(2),
            ScalelessBatchNorm(c_out),
            nn.GELU(),
            dirac_conv(c_out, c_out),
            ScalelessBatchNorm(c_out),
            nn.GELU(),
        )


class GlobalMaxPool(nn.Module):
    """The maximum over each channel's whole map, kept (N, C, 1, 1): airbench's MaxPool2d(3) on the 3×3 map of a
    32-px image, and any side's. A max-pool whose window is the map gives the adaptive pool's values and gradients
    bit for bit (the first maximum wins ties in both; tested on the CPU) without the adaptive pool's GPU kernels,
    whose forward and atomic backward took 7% of a speed94 epoch on an H100 (benchmarks/results/
    gpu_profile_speed94.txt)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, x.shape[-2:])


class SpeedNet(nn.Module):
    """Whitening convolution, three conv groups, global max-pool, scaled linear classifier."""

    init_images = WHITEN_IMAGES  # how many training images the trainer hands to init_from_data

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = WIDTHS) -> None:
        super().__init__()
        whiten_width = 2 * 3 * WHITEN_KERNEL**2
        self.whiten = nn.Conv2d(3, whiten_width, WHITEN_KERNEL, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.features = nn.Sequential(
            nn.GELU(),
            ConvGroup(whiten_width, widths[0]),
            ConvGroup(widths[0], widths[1]),
            ConvGroup(widths[1], widths[2]),
            GlobalMaxPool(),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(widths[2], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.whiten(x))) * LOGIT_SCALE

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the whitening filters from normalised training images (N, 3, H, W): the eigenvectors of the
        covariance of their 2×2 patches, each scaled by 1/√(eigenvalue + ε), and their negatives."""
        images = images[:WHITEN_IMAGES].float()
        k = WHITEN_KERNEL
        patches = images.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * k * k).double()
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)  # largest first
        filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + WHITEN_EPS)[:, None]).view(-1, 3, k, k)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight))

    def lr_scales(self) -> dict[int, float]:
        """Per-parameter learning-rate scales (``id`` → scale): BatchNorm shifts learn 64× faster."""
        norms = (m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))  # SyncBatchNorm too
        return {id(m.bias): BIAS_LR_SCALE for m in norms}

    def decay_scales(self) -> dict[int, float]:
        """Per-parameter weight-decay scales: every parameter decays (biases too), each by the same fraction per step
        (a shift's decay divided by its learning-rate scale), as airbench's."""
        scales = {id(p): 1.0 for p in self.parameters()}
        return scales | {i: 1 / s for i, s in self.lr_scales().items()}

    def trainable_epochs(self) -> dict[int, int]:
        """``id`` → epochs a parameter trains for: the whitening bias, the first 3 (airbench's)."""
        return {id(self.whiten.bias): 3}
