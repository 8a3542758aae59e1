"""imgclf: train, evaluate and compare image classifiers."""

__version__ = "0.1.0"
