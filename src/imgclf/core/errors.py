"""The one exception type the CLI turns into a one-line error, and the helpers that keep a message on one line."""


class ImgclfError(Exception):
    """A user-facing error: bad path, corrupt file, unknown name, invalid option."""


OPENVINO_MISSING = "the openvino runtime is not installed: pip install 'imgclf[openvino]'"


def one_line(text: str) -> str:
    """``text`` with its lines joined, so an error message stays on one line."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def shown(value, limit: int = 80) -> str:
    """A short one-line repr of ``value`` for an error message."""
    text = "null" if value is None else one_line(repr(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def os_reason(exc: OSError) -> str:
    """The operating system's reason for ``exc``, lower-case, e.g. 'no space left on device'."""
    reason = exc.strerror or one_line(str(exc)) or type(exc).__name__
    return reason[:1].lower() + reason[1:]


def type_name(value) -> str:
    """'a list', 'a string'… : what a YAML value is, for an error message."""
    names = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean", dict: "a mapping"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# options that do not change what a run computes: a finished run stays valid when they differ, --resume may set them
