"""Evaluation of trained runs on the held-out test split."""
