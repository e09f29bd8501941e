"""The experiment runner: worker pool order, dependencies, results passed on, failures reported."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from lightning_amortized.experiment import Job, JobFailed, run_jobs, write_results

WRITE = "import json, sys; json.dump({'x': int(sys.argv[2])}, open(sys.argv[1], 'w'))"


def _job(work: Path, name: str, x: int, **kw) -> Job:
    return Job(name, [sys.executable, "-c", WRITE, str(work / f"{name}.json"), str(x)], work / f"{name}.json", **kw)


def test_dependencies_known_results_and_callbacks(tmp_path: Path) -> None:
    seen = []
    jobs = [
        Job("late", lambda done: [sys.executable, "-c", WRITE, str(tmp_path / "late.json"), str(done["a"]["x"] * 10)],
            tmp_path / "late.json", after=("a",)),
        _job(tmp_path, "a", 4),
        _job(tmp_path, "known", 0),
    ]
    out = run_jobs(jobs, workers=2, log_dir=tmp_path / "logs", done={"known": {"x": 7}}, show_progress=False,
                   poll_s=0.02, on_finish=lambda name, result, s: seen.append(name) or f"{name} done")
    assert out == {"late": {"x": 40}, "a": {"x": 4}, "known": {"x": 7}}  # in the order of `jobs`
    assert seen == ["a", "late"] and not (tmp_path / "known.json").exists()  # a known result is not rerun
    assert (tmp_path / "logs" / "late.log").read_text().startswith("$ ")


def test_a_failing_job_names_itself_and_stops_the_others(tmp_path: Path) -> None:
    slow = Job("slow", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "slow.json")
    bad = Job("bad", [sys.executable, "-c", "print('something broke'); raise SystemExit(3)"], tmp_path / "bad.json")
    t0 = time.time()
    with pytest.raises(JobFailed, match=r"(?s)'bad' failed \(exit code 3.*something broke"):
        run_jobs([slow, bad], workers=2, log_dir=tmp_path, show_progress=False, poll_s=0.05)
    assert time.time() - t0 < 30  # the slow job was terminated, not waited for
    silent = Job("silent", [sys.executable, "-c", "pass"], tmp_path / "silent.json")
    with pytest.raises(JobFailed, match="no .*silent.json"):
        run_jobs([silent], workers=1, log_dir=tmp_path, show_progress=False, poll_s=0.02)
    with pytest.raises(ValueError, match="waits for"):
        run_jobs([_job(tmp_path, "x", 1, after=("nope",))], workers=1, log_dir=tmp_path)


def test_write_results_writes_both_files(tmp_path: Path) -> None:
    js, md = write_results(tmp_path / "sub" / "r", {"a": 1}, "# r")
    assert json.loads(js.read_text()) == {"a": 1} and md.read_text() == "# r\n"


def test_a_results_stem_with_dots_keeps_its_name(tmp_path: Path) -> None:
    j1, m1 = write_results(tmp_path / "demo_lr1.5e-3", {"a": 1}, "# one")
    j2, _ = write_results(tmp_path / "demo_lr1.0e-3", {"a": 2}, "# two")
    assert (j1.name, m1.name, j2.name) == ("demo_lr1.5e-3.json", "demo_lr1.5e-3.md", "demo_lr1.0e-3.json")
    assert json.loads(j1.read_text()) == {"a": 1} and json.loads(j2.read_text()) == {"a": 2}
    assert write_results(tmp_path / "base.json", {}, "x")[1].name == "base.md"  # a results suffix is replaced


def test_max_time_spells_any_cap_as_lightning_reads_it() -> None:
    from lightning.pytorch.callbacks import Timer

    from lightning_amortized.experiment import max_time

    for minutes, text in ((12.0, "00:00:12:00"), (0.5, "00:00:00:30"), (150, "00:02:30:00"), (1441, "01:00:01:00")):
        assert max_time(minutes) == text
        Timer(duration=text)  # a duration Lightning accepts
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive finite number of minutes"):
            max_time(bad)


def test_jobs_that_wait_for_each_other_are_refused_before_any_runs(tmp_path: Path) -> None:
    """A job after itself, or two after each other, looped forever with nothing running."""
    for jobs in ([_job(tmp_path, "a", 1, after=("a",))],
                 [_job(tmp_path, "a", 1, after=("b",)), _job(tmp_path, "b", 2, after=("a",)), _job(tmp_path, "c", 3)]):
        with pytest.raises(ValueError, match=r"wait for each other"):
            run_jobs(jobs, workers=1, log_dir=tmp_path / "logs", show_progress=False, poll_s=0.02)
    assert not (tmp_path / "c.json").exists()


def test_a_result_that_is_not_json_fails_the_job_with_its_log(tmp_path: Path) -> None:
    """It escaped as a bare JSONDecodeError, without the job's name or log."""
    code = f"print('half written'); open({str(tmp_path / 'bad.json')!r}, 'w').write('{{\"x\": ')"
    bad = Job("bad", [sys.executable, "-c", code], tmp_path / "bad.json")
    with pytest.raises(JobFailed, match=r"(?s)'bad' exited 0 but its result .* is not JSON.*half written"):
        run_jobs([bad], workers=1, log_dir=tmp_path / "logs", show_progress=False, poll_s=0.02)


def test_a_failure_stops_the_processes_the_other_jobs_started(tmp_path: Path) -> None:
    """Only the job itself was terminated: a worker it had started (corpus generation) lived on."""
    import os

    pid_file = tmp_path / "grandchild.pid"
    spawn = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
             f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    parent = Job("parent", [sys.executable, "-c", spawn], tmp_path / "parent.json")
    bad = Job("bad", [sys.executable, "-c", f"import os, time\nwhile not os.path.exists({str(pid_file)!r}): "
                                            "time.sleep(0.05)\nraise SystemExit(1)"], tmp_path / "bad.json")
    with pytest.raises(JobFailed, match="'bad' failed"):
        run_jobs([parent, bad], workers=2, log_dir=tmp_path, show_progress=False, poll_s=0.05)
    pid = int(pid_file.read_text())
    for _ in range(100):  # the grandchild goes with its group (reaped by init once its parent is gone)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            break  # dead, waiting for a reaper that may not exist in a container
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail("the grandchild outlived the failed run")
