"""A run's config from its sources, merged in order — the defaults, the model family's defaults (and, given no model,
the automatic choice), a config file, the command line — then validated."""

from pathlib import Path

from tqdm.auto import tqdm

from imgclf.config.auto import AUTO, auto_note, auto_values, family_defaults
from imgclf.config.options import TrainConfig
from imgclf.core.io import check_writable_folder
from imgclf.data.sources import is_builtin


def merged_values(file_values: dict, cli_values: dict) -> tuple[dict, str | None]:
    """The config values of a run: family defaults < automatic choice < config file < flags; and, when the model was
    chosen automatically, why."""
    values, why = {**file_values, **cli_values}, None
    if values.get("model", AUTO) == AUTO:
        chosen, why = auto_values(values)
        values = {**chosen, **values, "model": chosen["model"]}
    return {**family_defaults(values["model"]), **values}, why


def build_config(file_values: dict, cli_values: dict) -> TrainConfig:
    """The validated config of ``file_values`` under ``cli_values`` (see :func:`merged_values`), with a folder or
    label file given as ``data`` made absolute (the run is evaluated from anywhere) and the output folder checked to
    be writable; a model chosen automatically is said in one line (on stdout: a note, not an error)."""
    values, why = merged_values(file_values, cli_values)
    cfg = TrainConfig(**values)
    if isinstance(cfg.data, str) and cfg.data and not is_builtin(cfg.data):
        cfg.data = str(Path(cfg.data).expanduser().resolve())
    cfg.validate()
    check_writable_folder(cfg.output, "--output")
    if why is not None:
        tqdm.write(f"imgclf: {auto_note(cfg.model, cfg.img_size, why)}")
    return cfg
