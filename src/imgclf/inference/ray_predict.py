"""``imgclf predict RUN IMAGES… --ray [ADDRESS] --output DIR``: the same predictions on Ray Data, for more images
than one machine scores in time (the optional extra: ``pip install 'imgclf[ray]'``).

The driver lists the inputs as plain ``predict`` does (``inputs.py``). Ray Data then reads and decodes the files in
tasks (``data/decode.py``, as for training), feeds the images to a pool of actors that each load the model once
(``load.py``: the same predictor, the same runtime choice) and turn each batch into plain predict's rows
(``predict.predicted_rows``), and writes them as CSV or Parquet files into DIR, in input order, with plain predict's
columns. Failed tasks are retried and a lost actor restarted (``RETRIES``). With no ADDRESS Ray starts on this machine;
``auto`` or ``ray://HOST:10001`` joins a cluster, whose nodes need imgclf installed and the files at the same paths.
"""

import os
from pathlib import Path

import numpy as np

from imgclf.core.errors import ImgclfError
from imgclf.data.decode import decode_file
from imgclf.inference.inputs import input_files
from imgclf.inference.predict import Row, columns, predicted_rows, values

RAY_FORMATS = ("csv", "parquet")  # what --ray writes
RETRIES = 3  # attempts of a failed read task, restarts of a lost actor and retries of its batches
DECODE_BATCH = 256  # files per read-and-decode task


def decode_batch(batch: dict[str, np.ndarray], side: int, policy: str) -> dict[str, np.ndarray]:
    """In a Ray task: the images of a batch of ``path``/``file``/``error`` rows, read from ``file`` (absolute: a
    worker runs in a folder of its own), black where a file is unusable, its reason in ``error``."""
    images, errors = np.zeros((len(batch["path"]), 3, side, side), np.uint8), []
    for i, (file, error) in enumerate(zip(batch["file"], batch["error"], strict=True)):
        if not error:
            image, _, error = decode_file(str(file), side, policy, digest=False)
            if image is not None:
                images[i] = image
        errors.append(error)
    return {"path": batch["path"], "error": np.array(errors, dtype=object), "image": images}


class Scorer:
    """A Ray actor: loads the model once, then turns each batch of decoded images into plain predict's rows."""

    def __init__(self, source: str, runtime: str, top_k: int, calibrated: bool, flip_tta: bool) -> None:
        from imgclf.inference.load import load_predictor

        self.predictor = load_predictor(source, "cpu", runtime)
        self.top_k, self.calibrated, self.flip_tta = top_k, calibrated, flip_tta
        self.layout = (self.predictor.multilabel, self.predictor.card.abstain is not None, False)

    def __call__(self, batch: dict[str, np.ndarray]):
        paths, errors = [str(p) for p in batch["path"]], list(batch["error"])
        good = [i for i, error in enumerate(errors) if not error]
        rows = [Row(path, error=error) for path, error in zip(paths, errors, strict=True)]
        if good:
            images = np.asarray(batch["image"])[good]
            options = (self.top_k, self.calibrated, self.flip_tta)
            done = predicted_rows(self.predictor, images, [paths[i] for i in good], *options)
            for i, row in zip(good, done, strict=True):
                rows[i] = row
        table = [values(row, self.top_k, *self.layout) for row in rows]
        names = columns(self.top_k, *self.layout)
        return arrow_table({name: [r[j] for r in table] for j, name in enumerate(names)})


def arrow_table(cells: dict[str, list]):
    """The rows as a pyarrow table: probabilities as float64 (null where there is none: an empty CSV cell), the rest
    as strings."""
    import pyarrow as pa

    kind = {True: pa.float64(), False: pa.string()}
    return pa.table({name: pa.array(v, kind[name.startswith("probability_")]) for name, v in cells.items()})


def ray_predict(
    source: str | Path,
    items: list[str],
    output: str,
    address: str | None = None,
    kind: str = "csv",
    actors: int = 1,
    runtime: str = "auto",
    top_k: int = 5,
    calibrated: bool = True,
    flip_tta: bool = False,
    batch_size: int = 0,
) -> tuple[int, int]:
    """Predict the images ``items`` name on Ray Data, with ``actors`` copies of the model, into the folder ``output``
    (CSV or Parquet files, in input order): (predicted, skipped)."""
    try:
        import ray
        from ray.data import ActorPoolStrategy, DataContext
    except ImportError:
        raise ImgclfError("--ray needs Ray Data: pip install 'imgclf[ray]'") from None
    from imgclf.inference.load import resolve_model

    if kind not in RAY_FORMATS:
        raise ImgclfError(f"--ray writes --format csv or parquet, not {kind}")
    card = resolve_model(source, "cpu", runtime).card  # a one-line error before Ray starts
    target = Path(output)
    if target.is_file() or (target.is_dir() and any(target.iterdir())):
        raise ImgclfError(f"--output {output} must be a new or empty folder (Ray writes its files into it)")
    rows = [{"path": path, "file": os.path.abspath(path), "error": reason} for path, reason in input_files(items)]
    if not rows:
        raise ImgclfError("no inputs")
    started = not ray.is_initialized()  # a caller that started Ray itself keeps it
    if started:
        where = None if address in (None, "local") else address
        ray.init(address=where, include_dashboard=False, log_to_driver=False)
    try:
        DataContext.get_current().execution_options.preserve_order = True  # the rows come out in input order
        data = ray.data.from_items(rows).map_batches(
            decode_batch,
            fn_kwargs={"side": card.data_size, "policy": card.resize},
            batch_size=DECODE_BATCH,
            max_retries=RETRIES,
        )
        scored = data.map_batches(
            Scorer,
            fn_constructor_kwargs=dict(
                source=os.path.abspath(source), runtime=runtime, top_k=top_k, calibrated=calibrated, flip_tta=flip_tta
            ),
            batch_size=batch_size or 256,
            compute=ActorPoolStrategy(size=actors),
            max_restarts=RETRIES,
            max_task_retries=RETRIES,
        )
        getattr(scored, f"write_{kind}")(str(target))
    finally:
        if started:
            ray.shutdown()
    return counts(target, kind)


def counts(folder: Path, kind: str) -> tuple[int, int]:
    """(predicted, skipped) rows of the files written into ``folder``."""
    import pyarrow.dataset

    errors = pyarrow.dataset.dataset(folder, format=kind).to_table(columns=["error"]).column("error").to_pylist()
    skipped = sum(1 for error in errors if error)
    return len(errors) - skipped, skipped
