"""What a run leaves behind: the run directory and its files, the model card, weights files."""
