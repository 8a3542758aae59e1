"""Config values from outside: YAML files (bundled recipes or the user's, with ``base:``), mappings of options and
command-line flags, each value coerced to its option's type, merged over the defaults and validated."""

from pathlib import Path

from imgclf.config.options import field_types, optional_fields
from imgclf.core.errors import ImgclfError, shown, type_name
from imgclf.core.io import bundled_names, bundled_or_file, read_yaml_file

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"  # the bundled recipes
FINETUNE = "finetune"  # the bundled recipe a timm model without one starts from (config/auto.py)


def coerce(key: str, value, source: str):
    """Convert ``value`` to the type of config field ``key``, or raise a one-line error."""
    kind = field_types()[key]
    if value is None:
        if key in optional_fields():
            return None
        raise ImgclfError(f"{source}: '{key}' must be {kind.__name__}, got null")
    if kind is bool and isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ImgclfError(f"{source}: '{key}' is too large for a float, got {shown(value)}") from None
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise ImgclfError(f"{source}: '{key}' must be {kind.__name__}, got {shown(value)}")


def config_path(name_or_path: str | Path) -> Path:
    """A config file's path: an existing file, or the name of a bundled recipe."""
    return bundled_or_file(name_or_path, CONFIG_DIR, "config file")


def load_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML file (or bundled recipe) of config keys, rejecting unknown keys and wrong types in one line. A
    ``base: NAME`` key starts from another config (a bundled name or a path), whose keys the file then overrides."""
    path = config_path(path)
    data = read_yaml_file(path, "config file")
    if data is None:  # an empty file
        return {}
    if not isinstance(data, dict):
        raise ImgclfError(f"config file {path} must hold a mapping of option: value, got {type_name(data)}")
    values = {}
    if "base" in data:
        base = data.pop("base")
        if not isinstance(base, str):
            raise ImgclfError(f"base in config file {path} must name a config, got {type_name(base)}")
        if path.resolve() in _seen:
            raise ImgclfError(f"config file {path} is its own base (through {shown(base)})")
        if len(_seen) > 8:
            raise ImgclfError(f"config file {path}: bases nest more than 8 deep")
        where = base if Path(base).is_absolute() or base in bundled_names(CONFIG_DIR) else path.parent / base
        values = load_config_file(where, (*_seen, path.resolve()))
    return values | config_values(data, str(path), also=("base",))


def config_values(data: dict, source: str, also: tuple[str, ...] = ()) -> dict:
    """``data``'s options as config fields ('-' read as '_'), each value coerced to its field's type; an unknown key
    or a wrong type is a one-line error naming ``source`` (``also``: keys the caller takes besides the fields)."""
    known = field_types()
    names = {key: str(key).replace("-", "_") for key in data}
    for key, name in names.items():
        if name not in known:
            raise ImgclfError(f"unknown config key {shown(key)} in {source} (valid keys: {', '.join([*also, *known])})")
    return {name: coerce(name, data[key], source) for key, name in names.items()}
