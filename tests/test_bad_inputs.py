"""Bad command-line and config input: always one `imgclf: error:` line and exit code 2, never a traceback.

Every case fails before anything is written: the files it set up in its temporary folder stay as they were.
"""

import contextlib
import dataclasses
import errno
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from imgclf import cli
from imgclf.config.build import build_config
from imgclf.config.files import load_config_file
from imgclf.config.options import TrainConfig
from imgclf.core.errors import ImgclfError

# a seconds-long training run, should a case get that far: it must not
TRAIN = ["train", "--model", "resnet20", "--output", "{tmp}/out", "--train-subset", "64", "--epochs", "1"]
TRAIN += ["--batch-size", "32"]
TRAIN += ["--no-progress", "--no-tensorboard", "--no-evaluate"]
TIMM = ["--model", "tf_efficientnet_lite0"]
STUDY = ["study", "--preset", "{tmp}/p.yaml", "--output", "{tmp}/out", "--no-progress"]
EXPLORE = ["explore", "--output", "{tmp}/out"]
BINARY = bytes(range(256)) * 4

# id, arguments (appended to TRAIN when they start with a flag), files written into the temporary folder first
# ({tmp} stands for it, in arguments and file texts), and a piece of the expected error line
CASES = [
    # config files
    ("yaml-invalid", ["--config", "{tmp}/c.yaml"], {"c.yaml": "epochs: [1, 2\n"}, "is not valid YAML"),
    (
        "yaml-python-tag",
        ["--config", "{tmp}/c.yaml"],
        {"c.yaml": "epochs: !!python/object/apply:os.system ['touch {tmp}/pwned']\n"},
        "!!python/object/apply:os.system",
    ),
    ("yaml-binary", ["--config", "{tmp}/c.yaml"], {"c.yaml": BINARY}, "is not UTF-8 text"),
    ("yaml-latin1", ["--config", "{tmp}/c.yaml"], {"c.yaml": "model: café\n".encode("latin-1")}, "not UTF-8"),
    ("yaml-nul", ["--config", "{tmp}/c.yaml"], {"c.yaml": b"epochs: 3\x00\n"}, "is not valid YAML"),
    ("yaml-list", ["--config", "{tmp}/c.yaml"], {"c.yaml": "- epochs\n- 3\n"}, "mapping of option: value, got a list"),
    ("yaml-scalar", ["--config", "{tmp}/c.yaml"], {"c.yaml": "42\n"}, "mapping of option: value, got a number"),
    ("yaml-bad-date", ["--config", "{tmp}/c.yaml"], {"c.yaml": "name: 2001-13-45\n"}, "month must be in 1..12"),
    ("yaml-deep", ["--config", "{tmp}/c.yaml"], {"c.yaml": "a: " + "[" * 5000 + "]" * 5000}, "is not valid YAML"),
    ("yaml-unknown-key", ["--config", "{tmp}/c.yaml"], {"c.yaml": "learning_rate: 0.1\n"}, "unknown config key"),
    ("yaml-wrong-type", ["--config", "{tmp}/c.yaml"], {"c.yaml": "lr: fast\n"}, "'lr' must be float"),
    ("yaml-huge-number", ["--config", "{tmp}/c.yaml"], {"c.yaml": f"lr: {'9' * 400}\n"}, "too large for a float"),
    ("yaml-nan", ["--config", "{tmp}/c.yaml"], {"c.yaml": "lr: .nan\n"}, "--lr must be a finite number"),
    ("yaml-name-nul", ["--config", "{tmp}/c.yaml"], {"c.yaml": 'name: "a\\0b"\n'}, "--name must not contain a NUL"),
    ("null-epochs", ["--config", "{tmp}/c.yaml"], {"c.yaml": "epochs: null\n"}, "'epochs' must be int, got null"),
    ("null-model", ["--config", "{tmp}/c.yaml"], {"c.yaml": "model: ~\n"}, "'model' must be str, got null"),
    ("config-is-folder", ["--config", "{tmp}"], {}, "is a folder"),
    ("config-missing", ["--config", "{tmp}/nope.yaml"], {}, "config file not found"),
    ("config-dev-null", ["--config", "/dev/null"], {}, "is not a regular file"),
    ("config-own-base", ["--config", "{tmp}/c.yaml"], {"c.yaml": "base: c.yaml\n"}, "is its own base"),
    (
        "config-base-loop",
        ["--config", "{tmp}/c.yaml"],
        {"c.yaml": "base: d.yaml\n", "d.yaml": "base: c.yaml\n"},
        "is its own base",
    ),
    ("config-base-number", ["--config", "{tmp}/c.yaml"], {"c.yaml": "base: 3\n"}, "base in config file"),
    ("config-base-missing", ["--config", "{tmp}/c.yaml"], {"c.yaml": "base: nope\n"}, "config file not found"),
    # study presets
    ("preset-list", STUDY, {"p.yaml": "- a\n- b\n"}, "mapping with a 'runs' key, got a list"),
    ("preset-runs-list", STUDY, {"p.yaml": "runs: [a, b]\n"}, "'runs' mapping of run name: options, got a list"),
    ("preset-runs-missing", STUDY, {"p.yaml": "name: x\n"}, "'runs' mapping of run name: options, got null"),
    ("preset-run-options-list", STUDY, {"p.yaml": "runs:\n  a: [1, 2]\n"}, "run 'a' of study preset"),
    ("preset-missing-config", STUDY, {"p.yaml": "runs:\n  a:\n    config: {tmp}/no.yaml\n"}, "config file not found"),
    ("preset-python-tag", STUDY, {"p.yaml": "runs: !!python/object:object {}\n"}, "!!python/object:object"),
    ("preset-invalid-yaml", STUDY, {"p.yaml": "runs: {a: [\n"}, "is not valid YAML"),
    ("preset-binary", STUDY, {"p.yaml": BINARY}, "is not UTF-8 text"),
    ("preset-null-epochs", STUDY, {"p.yaml": "runs:\n  a:\n    epochs: null\n"}, "'epochs' must be int, got null"),
    ("preset-run-name-dotdot", STUDY, {"p.yaml": "runs:\n  ..:\n    epochs: 1\n"}, "--name must be a folder name"),
    ("preset-is-folder", [*STUDY[:2], "{tmp}", *STUDY[3:]], {}, "is a folder"),
    ("study-set-bad-yaml", [*STUDY, "--set", "lr=[0.1"], {"p.yaml": "runs: {a: {}}\n"}, "--set lr is not valid YAML"),
    ("study-set-null", [*STUDY, "--set", "epochs="], {"p.yaml": "runs: {a: {}}\n"}, "'epochs' must be int, got null"),
    # numbers outside their domain
    ("seed-negative", ["--seed", "-1"], {}, "--seed must be in [0, 2**32), got -1"),
    ("seed-huge", ["--seed", str(2**32)], {}, "--seed must be in [0, 2**32)"),
    ("momentum-negative", ["--momentum", "-0.1"], {}, "--momentum must be in [0, 1), got -0.1"),
    ("momentum-1", ["--momentum", "1"], {}, "--momentum must be in [0, 1)"),
    ("label-smoothing-2", ["--label-smoothing", "2"], {}, "--label-smoothing must be in [0, 1), got 2.0"),
    ("lr-nan", ["--lr", "nan"], {}, "--lr must be a finite number, got nan"),
    ("lr-inf", ["--lr", "inf"], {}, "--lr must be a finite number, got inf"),
    ("weight-decay-nan", ["--weight-decay", "nan"], {}, "--weight-decay must be a finite number"),
    ("unfreeze-nan", [*TIMM, "--unfreeze", "nan"], {}, "--unfreeze must be"),
    ("unfreeze-inf", [*TIMM, "--unfreeze", "inf"], {}, "--unfreeze must be"),
    ("val-fraction-1", ["--val-fraction", "1"], {}, "--val-fraction must be in [0, 1)"),
    ("test-fraction-negative", ["--test-fraction", "-0.5"], {}, "--test-fraction must be in [0, 1)"),
    (
        "fractions-sum-1",
        ["--data", "{tmp}/images", "--val-fraction", "0.5", "--test-fraction", "0.5"],
        {},
        "--val-fraction + --test-fraction must be below 1",
    ),
    ("data-size-negative", ["--data-size", "-1"], {}, "--data-size must not be negative"),
    ("checkpoint-every-negative", ["--checkpoint-every", "-1"], {}, "--checkpoint-every must not be negative"),
    ("data-size-huge", ["--data-size", "4096"], {}, "cannot fit in memory"),
    ("img-size-huge", [*TIMM, "--img-size", "100000"], {}, "--img-size must be at most 1024"),
    ("batch-size-huge", ["--batch-size", "1000000"], {}, "--batch-size must be a positive integer up to 65536"),
    ("batch-size-0", ["--batch-size", "0"], {}, "--batch-size must be a positive integer"),
    ("epochs-negative", ["--epochs", "-3"], {}, "--epochs must be a positive integer"),
    ("workers-negative", ["--workers", "-1"], {}, "--workers must not be negative"),
    ("reduce-lr-factor-0", ["--reduce-lr-factor", "0"], {}, "--reduce-lr-factor must be in (0, 1]"),
    ("reduce-lr-factor-2", ["--reduce-lr-factor", "2"], {}, "--reduce-lr-factor must be in (0, 1]"),
    ("progressive-size-negative", ["--progressive-size", "-16"], {}, "--progressive-size must not be negative"),
    ("device-meta", ["--device", "meta"], {}, "unknown device 'meta'"),
    ("device-mps", ["--device", "mps"], {}, "device 'mps'"),
    ("device-cuda-x", ["--device", "cuda:x"], {}, "unknown device 'cuda:x'"),
    ("explore-per-class-0", [*EXPLORE, "--per-class", "0"], {}, "--per-class must be in 1..64, got 0"),
    ("explore-per-class-negative", [*EXPLORE, "--per-class", "-1"], {}, "--per-class must be in 1..64, got -1"),
    ("explore-per-class-6000", [*EXPLORE, "--per-class", "6000"], {}, "--per-class must be in 1..64, got 6000"),
    ("explore-data-size-huge", [*EXPLORE, "--data-size", "5000"], {}, "--data-size must be in 0..1024"),
    # output folders and run names
    ("output-is-file", ["--output", "{tmp}/file"], {"file": "x"}, "is not a folder"),
    ("output-under-file", ["--output", "{tmp}/file/sub"], {"file": "x"}, "exists and is not a folder"),
    ("output-dev-null", ["--output", "/dev/null"], {}, "--output /dev/null is not a folder"),
    ("output-name-too-long", ["--output", "{tmp}/" + "x" * 300], {}, "name too long"),
    ("explore-output-is-file", [*EXPLORE, "--output", "{tmp}/file"], {"file": "x"}, "is not a folder"),
    ("name-dotdot", ["--name", ".."], {}, "--name must be a folder name, not '..'"),
    ("name-dot", ["--name", "."], {}, "--name must be a folder name, not '.'"),
    ("name-abs", ["--name", "/tmp/run"], {}, "without path separators"),
    ("name-slash", ["--name", "a/b"], {}, "without path separators"),
    ("name-empty", ["--name", ""], {}, "--name must be a non-empty folder name"),
    ("name-too-long", ["--name", "a" * 201], {}, "--name must be at most 200 bytes"),
    ("name-newline", ["--name", "a\nb"], {}, "control characters"),
    # argparse
    ("argparse-unknown-flag", ["--epochz", "3"], {}, "unrecognized arguments: --epochz 3"),
    ("argparse-bad-int", ["--epochs", "x"], {}, "argument --epochs: invalid int value: 'x'"),
    ("argparse-bad-float", ["--lr", "fast"], {}, "argument --lr: invalid float value: 'fast'"),
    ("argparse-missing-argument", ["--epochs"], {}, "argument --epochs: expected one argument"),
    ("argparse-bad-choice", ["--optimizer", "adam"], {}, "argument --optimizer: invalid choice: 'adam'"),
    ("argparse-no-command", [], {}, "the following arguments are required: command"),
    ("argparse-unknown-command", ["trian"], {}, "invalid choice: 'trian'"),
    ("argparse-evaluate-no-run", ["evaluate"], {}, "the following arguments are required: run_dir"),
    ("argparse-explore-bad-int", [*EXPLORE, "--per-class", "many"], {}, "invalid int value: 'many'"),
    # using a model: predict, export, serve
    ("predict-no-run", ["predict", "{tmp}/nothing", "{tmp}/x.png"], {}, "no such run directory or model file"),
    ("predict-not-a-run", ["predict", "{tmp}", "{tmp}/x.png"], {}, "not a run directory"),
    ("predict-fake-onnx", ["predict", "{tmp}/m.onnx", "{tmp}/x.png"], {"m.onnx": BINARY}, "not an ONNX model"),
    ("predict-fake-weights", ["predict", "{tmp}/m.safetensors", "x.png"], {"m.safetensors": BINARY}, "cannot read"),
    ("predict-text-model", ["predict", "{tmp}/m.txt", "x.png"], {"m.txt": "hi"}, "is not a run directory, .safet"),
    ("predict-top-k", ["predict", "{tmp}", "x.png", "--top-k", "0"], {}, "--top-k must be a positive integer"),
    ("argparse-predict-format", ["predict", "{tmp}", "x.png", "--format", "xml"], {}, "invalid choice: 'xml'"),
    ("argparse-predict-no-images", ["predict", "{tmp}"], {}, "the following arguments are required: IMAGE"),
    ("export-not-a-run", ["export", "{tmp}"], {}, "not a run directory"),
    ("export-check-images", ["export", "{tmp}", "--check-images", "-1"], {}, "--check-images must be 0 or more"),
    ("argparse-export-format", ["export", "{tmp}", "--format", "tflite"], {}, "invalid choice: 'tflite'"),
    ("serve-not-a-run", ["serve", "{tmp}"], {}, "not a run directory"),
    ("serve-fake-onnx", ["serve", "{tmp}/m.onnx"], {"m.onnx": b"xx"}, "not an ONNX model"),
    ("serve-body-limit", ["serve", "{tmp}", "--max-body-mb", "-1"], {}, "--max-body-mb must be a positive number"),
    ("serve-port", ["serve", "{tmp}", "--port", "99999"], {}, "--port must be in 0..65535"),
    ("argparse-serve-port", ["serve", "{tmp}", "--port", "http"], {}, "invalid int value: 'http'"),
]
# these also run as the installed script, to prove no traceback reaches the terminal
SUBPROCESS = {"yaml-python-tag", "preset-runs-list", "unfreeze-nan", "output-dev-null", "output-name-too-long"}
SUBPROCESS |= {"explore-per-class-6000", "argparse-bad-int", "argparse-unknown-flag", "predict-fake-onnx", "serve-port"}


def expand(value: str | bytes, tmp: Path) -> str | bytes:
    """``value`` with ``{tmp}`` replaced by the case's temporary folder."""
    return value if isinstance(value, bytes) else value.replace("{tmp}", str(tmp))


def case_args(args: list[str], tmp: Path) -> list[str]:
    """The full command line of a case: its arguments after TRAIN's, unless they name a command."""
    if not args:
        return []
    full = [*TRAIN, *args] if args[0].startswith("-") else args
    return [expand(a, tmp) for a in full]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size and modification time."""
    return {
        str(p.relative_to(root)): (p.is_dir(), p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")
    } | {".": (True, 0, root.stat().st_mtime_ns)}


def imgclf(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed `imgclf` script."""
    exe = shutil.which("imgclf") or str(Path(sys.executable).with_name("imgclf"))
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=300, **kwargs)


def assert_one_line_error(code: int, stderr: str, pattern: str, usage: bool = False) -> None:
    """Exit code 2, and stderr is one `imgclf: error:` line holding ``pattern`` (after one usage line if ``usage``)."""
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip("\n").split("\n")
    if usage:
        assert len(lines) == 2 and lines[0].startswith("usage: imgclf") and "--help lists them" in lines[0], stderr
        lines = lines[1:]
    assert len(lines) == 1 and lines[0].startswith("imgclf: error: "), stderr
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize(("args", "files", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(args, files, pattern, request, tmp_path, monkeypatch, capsys):
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(expand(content, tmp_path))
    monkeypatch.chdir(tmp_path)  # even a default output folder would land here, and be noticed
    argv = case_args(args, tmp_path)
    before = snapshot(tmp_path)
    usage = request.node.callspec.id.startswith("argparse-")
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert_one_line_error(code, err, pattern, usage)
    assert out == ""
    assert snapshot(tmp_path) == before
    if request.node.callspec.id in SUBPROCESS:
        result = imgclf(*argv, cwd=tmp_path)
        assert_one_line_error(result.returncode, result.stderr, pattern, usage)
        assert snapshot(tmp_path) == before


def test_every_subprocess_case_exists():
    assert {c[0] for c in CASES} >= SUBPROCESS
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(
    ("number", "reason"),
    [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system"), (errno.EACCES, "permission")],
)
def test_os_errors_are_one_line(number, reason, monkeypatch, capsys, tmp_path):
    def full_disk(args) -> None:
        raise OSError(number, os.strerror(number), str(tmp_path / "out" / "run" / "last.safetensors"))

    monkeypatch.setattr(cli, "command_models", full_disk)
    assert cli.main(["models"]) == 2
    err = capsys.readouterr().err
    assert_one_line_error(2, err, reason)
    assert str(tmp_path / "out" / "run" / "last.safetensors") in err


def test_read_only_output_folder(tmp_path, capsys):
    """A folder the user may not write into: refused in validation, before any data loads."""
    if os.geteuid() != 0:
        readonly = tmp_path / "ro"
        readonly.mkdir()
        readonly.chmod(0o555)
        try:
            code = cli.main(case_args(["--output", str(readonly / "out")], tmp_path))
            assert_one_line_error(code, capsys.readouterr().err, "is not writable")
            assert list(readonly.iterdir()) == []
        finally:
            readonly.chmod(0o755)
        return
    # root writes anywhere: run the script as an unprivileged user instead
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot test a read-only folder")
    home = Path(tempfile.mkdtemp())
    readonly = home / "ro"
    try:
        home.chmod(0o755)
        readonly.mkdir()
        readonly.chmod(0o555)
        exe = shutil.which("imgclf") or str(Path(sys.executable).with_name("imgclf"))
        args = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups", exe]
        env = {**os.environ, "HOME": str(home)}
        result = subprocess.run(
            [*args, *case_args(["--output", str(readonly / "out")], home)],
            capture_output=True,
            text=True,
            cwd=home,
            env=env,
            timeout=300,
        )
        if result.returncode != 2 and "Permission denied" in result.stderr and "imgclf" not in result.stderr:
            pytest.skip(f"cannot run imgclf as an unprivileged user here: {result.stderr.strip()}")
        assert_one_line_error(result.returncode, result.stderr, "is not writable")
        assert list(readonly.iterdir()) == []
    finally:
        shutil.rmtree(home)


def test_help_still_lists_every_option(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: imgclf train [-h]") and "--label-smoothing" in out and "--unfreeze" in out
    assert cli.main(["--help"]) == 0
    verbs = "{train,evaluate,predict,export,serve,benchmark,explore,audit,compare,study,models}"
    assert verbs in capsys.readouterr().out


def test_config_starts_from_its_base(tmp_path):
    # a bundled base by name, a file's base by a path relative to the file; each file overrides its base's keys
    (tmp_path / "a.yaml").write_text("base: speed94\nepochs: 10\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nval_fraction: 0.0\n")
    values = load_config_file(tmp_path / "b.yaml")
    speed94 = load_config_file("speed94")
    assert values == speed94 | {"epochs": 10, "val_fraction": 0.0}
    gpu = {"epochs": 10, "val_fraction": 0.0, "compile": False, "checkpoint_every": 60}
    assert load_config_file("speed94_gpu") == speed94 | gpu
    long_tail = {
        "epochs": 120,
        "augment": "trivial",
        "cutmix": 1.0,
        "val_fraction": 0.05,
        "monitor": "last",
        "balance": "logit-adjust",
    }
    assert load_config_file("speed94_lt") == speed94 | long_tail
    for number in range(12):  # a chain of bases without a loop, deeper than any recipe needs
        (tmp_path / f"n{number}.yaml").write_text(f"base: n{number + 1}.yaml\n" if number < 11 else "epochs: 3\n")
    with pytest.raises(ImgclfError, match="bases nest more than 8 deep"):
        load_config_file(tmp_path / "n0.yaml")
    assert load_config_file(tmp_path / "n5.yaml") == {"epochs": 3}


def test_optional_fields_may_be_null(tmp_path):
    (tmp_path / "c.yaml").write_text("weights: null\nname: null\ndata_dir: null\ncache_dir: null\nprepare_dir: null\n")
    values = load_config_file(tmp_path / "c.yaml")
    assert set(values.values()) == {None}
    assert build_config(values, {"output": str(tmp_path)}).name is None


# property-based: whatever the file holds, reading it gives a valid result or an ImgclfError, never another exception

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
FRAGMENTS = [
    "!!python/object/apply:os.system ['true']",
    "!!python/name:os.system",
    "!!int x",
    "!!float x",
    "!!binary x",
    "!!set [1]",
    "2001-13-45",
    ".nan",
    ".inf",
    "-.inf",
    "[",
    "{",
    "&a [*a]",
    "*a",
    "~",
    "- 1",
    "'",
    '"\\0"',
    "|",
    "%YAML 1.1",
    "---",
    "? [1]\n: 2",
    "9" * 400,
    "resnet20",
    "tf_efficientnet_lite0",
    "nan",
    "mps",
    "..",
    "/dev/null",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
STRINGS = st.text(max_size=12) | st.sampled_from(
    ["resnet20", "simple_cnn", "tf_efficientnet_lite0", "all", "0.5", "3", "nan", "inf", "-1", "1e400", "cpu"]
)
STRINGS |= st.sampled_from(["cuda:0", "mps", "meta", "..", "a/b", "", "cifar10", "run-1", "/dev/null"])


def typed_values(name: str) -> st.SearchStrategy:
    """Values for config field ``name``: mostly of its type, at and beyond the edges of its domain; some of any type."""
    kind = dataclasses.fields(TrainConfig)[FIELDS.index(name)].type
    choices = dataclasses.fields(TrainConfig)[FIELDS.index(name)].metadata["choices"]
    if choices:
        good = st.sampled_from([*choices, "other"])
    elif kind is bool:
        good = st.booleans()
    elif kind is int:
        good = st.integers(min_value=-3, max_value=300) | st.sampled_from([2**32, 65537, 10**6, -(2**63)])
    elif kind is float:
        good = st.floats(min_value=-0.5, max_value=2.0) | st.sampled_from([math.nan, math.inf, -math.inf, 1e308])
    else:
        good = STRINGS
    return st.one_of(good, good, good, SCALARS)


# a few known keys with plausible values: these reach TrainConfig.validate
TYPED_MAPPINGS = st.lists(st.sampled_from(FIELDS), max_size=5, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({n: typed_values(n) for n in names})
)
KEYS = st.sampled_from([*FIELDS, "config", "runs", "learning_rate", "batch-size", "label-smoothing"]) | st.text(
    max_size=10
)
MAPPINGS = TYPED_MAPPINGS | st.dictionaries(KEYS, VALUES, max_size=4)
YAML_LINES = st.lists(st.tuples(KEYS, st.text(max_size=15) | st.sampled_from(FRAGMENTS)), max_size=6).map(
    lambda pairs: "\n".join(f"{k}: {v}" for k, v in pairs)
)
TEXTS = st.one_of(st.text(), YAML_LINES, st.sampled_from(FRAGMENTS), MAPPINGS.map(yaml.safe_dump))
CONFIG_NAMES = st.sampled_from(["resnet20", "simple_cnn", "lite2_96", "nope", "", "/dev/null", ".", 3])
RUN_OPTIONS = st.one_of(
    st.none(),
    VALUES,
    TYPED_MAPPINGS,
    TYPED_MAPPINGS.flatmap(lambda m: CONFIG_NAMES.map(lambda config: {**m, "config": config})),
)
RUN_NAMES = st.sampled_from(["a", "b", "c"]) | st.text(max_size=8) | st.integers() | st.none()
PRESETS = st.one_of(
    TEXTS,
    st.dictionaries(RUN_NAMES, RUN_OPTIONS, max_size=3).map(lambda runs: yaml.safe_dump({"runs": runs})),
    st.dictionaries(st.sampled_from(["runs", "name"]), VALUES, max_size=2).map(yaml.safe_dump),
)
PROPERTY = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def scratch_file(content: str | bytes):
    """A temporary working folder holding ``content`` in ``f.yaml``; yields the file's path."""
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        path = Path(folder) / "f.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
        yield path


def config_or_refusal(path: Path) -> None:
    """Read a config file and validate it: a TrainConfig, or one ImgclfError line."""
    try:
        cfg = build_config(load_config_file(path), {"output": str(path.parent / "out")})
    except ImgclfError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(cfg, TrainConfig)


def preset_or_refusal(path: Path) -> None:
    """Read a study preset: the configs of its runs, or one ImgclfError line."""
    from imgclf.study import study_configs

    try:
        configs = study_configs(path, path.parent / "out", {})
    except ImgclfError as exc:
        assert "\n" not in str(exc)
    else:
        assert configs and all(isinstance(c, TrainConfig) for c in configs.values())
    assert not (path.parent / "out").exists()


@PROPERTY
@given(TEXTS)
@example("exclude: " + "1" * 300)  # a file name too long for the file system: Python 3.11 raised it from is_file
def test_any_config_text_is_read_or_refused(text):
    with scratch_file(text) as path:
        config_or_refusal(path)


@PROPERTY
@given(st.binary(max_size=300))
def test_any_config_bytes_are_read_or_refused(data):
    with scratch_file(data) as path:
        config_or_refusal(path)


@PROPERTY
@given(MAPPINGS)
def test_any_config_mapping_is_read_or_refused(mapping):
    with scratch_file(yaml.safe_dump(mapping)) as path:
        config_or_refusal(path)


@PROPERTY
@given(PRESETS | st.binary(max_size=300))
def test_any_study_preset_is_read_or_refused(content):
    with scratch_file(content) as path:
        preset_or_refusal(path)
