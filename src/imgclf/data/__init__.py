"""Data: CIFAR-10 loading and splitting, batch augmentation, in-memory batch loading."""
