"""Time ``make demo`` as a new user runs it: a clean clone of HEAD, a fresh virtualenv.

Clones this repository's committed ``HEAD`` into a temporary folder, runs ``make install``
(virtualenv + pinned install) and then ``make demo`` (corpus, training, test, table),
timing each, and copies the clone's ``docs/results/demo_synthetic.{json,md}`` here with
``install_seconds`` and ``make_demo_seconds`` (install + demo, the whole command) added.

Usage::

    python benchmarks/clean_clone_demo.py            # about 15 minutes on 2 cores
    python benchmarks/clean_clone_demo.py --keep     # keep the clone (prints its path)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_amortized.experiment import write_results  # noqa: E402

RESULTS = REPO / "docs" / "results"


def _timed(cmd: list[str], cwd: Path, log: Path) -> float:
    t0 = time.time()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}; see {log}")
    return time.time() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", action="store_true", help="keep the clone")
    p.add_argument("--results", default=str(RESULTS / "demo_synthetic"))
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="clean-clone-demo-"))
    clone = work / "repo"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, check=True, capture_output=True, text=True).stdout.strip()
    install_s = _timed(["make", "install"], clone, work / "install.log")
    demo_s = _timed(["make", "demo"], clone, work / "demo.log")
    src = clone / "docs" / "results" / "demo_synthetic"
    info = json.loads(src.with_suffix(".json").read_text())
    info.update(
        install_seconds=round(install_s, 1),
        make_demo_seconds=round(install_s + demo_s, 1),
        commit=commit,
        clean_clone_command="python benchmarks/clean_clone_demo.py",
    )
    for key in ("checkpoint", "log_dir", "config"):  # paths inside the (temporary) clone
        if isinstance(info.get(key), str):
            info[key] = info[key].replace(str(clone) + "/", "")
    md = src.with_suffix(".md").read_text().replace(str(clone) + "/", "")
    md += (
        f"\nFrom a clean clone of commit `{commit[:10]}` (`python benchmarks/clean_clone_demo.py`): "
        f"`make install` {install_s:.0f} s, `make demo` {demo_s:.0f} s, **{(install_s + demo_s) / 60:.1f} minutes in all**.\n"
    )
    write_results(a.results, info, md)
    print(md)
    if a.keep:
        print(f"clone kept at {clone}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
