"""The one exception type the CLI turns into a one-line error message."""


class ImgclfError(Exception):
    """A user-facing error: bad path, corrupt file, unknown name, invalid option."""
