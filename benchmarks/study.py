"""The whole study, timed end to end from an empty activation cache (issue 4: ≤ 2.5 h on the 2-core CPU).

    uv run python benchmarks/study.py              # the reference preset
    uv run python benchmarks/study.py --quick      # the quick preset (target ≤ 10 min)

Writes benchmarks/results/study_PRESET.json and copies the comparison report to benchmarks/results/study_PRESET/.
"""

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    preset = "quick" if args.quick else "reference"
    output = Path("benchmarks") / "runs" / f"study_{preset}"  # relative to the repository (the command runs there)
    cache_dir = output.parent / f"cache_study_{preset}"
    for path in (ROOT / output, ROOT / cache_dir):  # a cold start
        if path.exists():
            shutil.rmtree(path)
    command = ["imgclf", "study", "--output", str(output), "--set", f"cache_dir={cache_dir}", "--no-progress"]
    command += ["--quick"] if args.quick else []
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    wall = time.perf_counter() - start
    study = json.loads((ROOT / output / "study.json").read_text())
    record = {
        "benchmark": "study",
        "model": preset,
        "command": "uv run " + shlex.join(command),
        "seed": 0,
        "wall_seconds": round(wall, 1),
        "runs": study["runs"],
        "test_accuracy": {name: run["test_accuracy"] for name, run in study["runs"].items()},
    }
    print(f"study {preset}: {wall / 60:.1f} min wall")
    # written before the report is copied in: its commit is then the code's, without '+dirty' from the report
    print("wrote", write_result(f"study_{preset}", record))
    report = RESULTS / f"study_{preset}"
    if report.exists():
        shutil.rmtree(report)
    shutil.copytree(ROOT / output / "comparison", report)


if __name__ == "__main__":
    main()
