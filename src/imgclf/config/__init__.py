"""A run's options: the dataclass and its checks (``options.py``), and reading them from files (``files.py``)."""
