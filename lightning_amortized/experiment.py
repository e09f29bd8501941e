"""Running experiments: a pool of worker processes, and results written atomically.

The benchmarks (``benchmarks/amnet.py``, ``benchmarks/diff_updates.py``) run one process per
configuration, a few at a time with one thread each, and collect the JSON each process
writes; :func:`run_jobs` is that pool. :func:`write_results` writes a result's ``.json``
and ``.md`` side by side, atomically. Fitting and testing one model is
:func:`lightning_amortized.evaluation.fit_and_test`.

Example:
    >>> import sys, tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> work = Path(tmp.name)
    >>> code = "import json, sys; json.dump({'x': int(sys.argv[2])}, open(sys.argv[1], 'w'))"
    >>> jobs = [Job("a", [sys.executable, "-c", code, str(work / "a.json"), "1"], work / "a.json"),
    ...         Job("b", lambda done: [sys.executable, "-c", code, str(work / "b.json"), str(done["a"]["x"] + 1)],
    ...             work / "b.json", after=("a",))]
    >>> run_jobs(jobs, workers=2, log_dir=work, show_progress=False, poll_s=0.05)
    {'a': {'x': 1}, 'b': {'x': 2}}
    >>> tmp.cleanup()
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from lightning_amortized.atomic import write_atomic

__all__ = ["Job", "JobFailed", "max_time", "percent", "result_file", "run_jobs", "shown_path", "write_results"]

Command = Union[Sequence[str], Callable[[Mapping[str, dict[str, Any]]], Sequence[str]]]


class JobFailed(RuntimeError):
    """A job exited with an error or wrote no result; the message holds the end of its log."""


@dataclass(frozen=True)
class Job:
    """One worker process of an experiment.

    Attributes:
        name: Unique name (also the log file's stem: ``<log_dir>/<name>.log``).
        command: The command line, or a function of the finished jobs' results
            (``{name: result}``) that returns it when the job starts (e.g. a size matched
            to another job's measured cost).
        result: The JSON file the job writes when it succeeds.
        after: Jobs that must have finished first.
        progress: A JSON-lines file the job appends one line to per unit of work (for the
            progress bar); ``None`` counts the job as one unit when it ends.
        units: Units of work in the job (lines expected in ``progress``).
    """

    name: str
    command: Command
    result: Path
    after: tuple[str, ...] = ()
    progress: Path | None = None
    units: int = 1


def _count_lines(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def run_jobs(
    jobs: Sequence[Job],
    workers: int,
    log_dir: str | os.PathLike,
    *,
    cwd: str | os.PathLike | None = None,
    threads_per_job: int = 1,
    env: Mapping[str, str] | None = None,
    done: Mapping[str, dict[str, Any]] | None = None,
    on_finish: Callable[[str, dict[str, Any], float], str | None] | None = None,
    desc: str = "jobs",
    show_progress: bool = True,
    poll_s: float = 2.0,
) -> dict[str, dict[str, Any]]:
    """Run ``jobs`` as subprocesses, ``workers`` at a time, and return their results.

    Each process gets ``OMP_NUM_THREADS=MKL_NUM_THREADS=threads_per_job`` and its output
    goes to ``<log_dir>/<name>.log`` (the command line first). A job starts once the jobs
    in its ``after`` have finished. A tqdm bar counts units of work over all jobs.

    Args:
        jobs: The jobs, in the order they should start.
        workers: Processes at a time (>= 1).
        log_dir: Folder for the logs (created).
        cwd: Working directory of the processes.
        threads_per_job: Intra-op threads per process.
        env: Extra environment variables for the processes.
        done: Results already known (``{name: result}``, e.g. from an earlier run): those
            jobs are not run, and their results are passed to ``command`` functions.
        on_finish: Called as ``on_finish(name, result, seconds)`` when a job succeeds; a
            returned string is printed above the bar.
        desc: Label of the progress bar.
        show_progress: Show the bar.
        poll_s: Seconds between checks of the running processes.

    Returns:
        ``{name: result}`` for every job, in the order of ``jobs``.

    Raises:
        JobFailed: A job exited with an error or without writing ``result``; the other
            running jobs are terminated. The message names the job and its log, with the
            log's last lines.
        ValueError: Duplicate names, an ``after`` that names no job, or jobs that wait for
            each other (or for themselves).
    """
    from tqdm.auto import tqdm

    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"Expected unique job names, but got {names}.")
    finished: dict[str, dict[str, Any]] = {n: dict(r) for n, r in (done or {}).items() if n in names}
    for j in jobs:
        missing = [a for a in j.after if a not in names and a not in finished]
        if missing:
            raise ValueError(f"Job {j.name!r} waits for {missing}, which are not jobs of this run.")
    _refuse_cycles(jobs, finished)
    if workers < 1:
        raise ValueError(f"Expected argument `workers` to be >= 1, but got {workers}.")
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_job), "MKL_NUM_THREADS": str(threads_per_job),
           "PYTHONUNBUFFERED": "1", **dict(env or {})}
    pending = [j for j in jobs if j.name not in finished]
    running: dict[str, tuple[Job, subprocess.Popen, Any, float]] = {}
    counted: dict[str, int] = {}
    total = sum(j.units for j in jobs)
    bar = tqdm(total=total, initial=sum(j.units for j in jobs if j.name in finished), desc=desc,
               disable=not show_progress, dynamic_ncols=True)

    def say(message: str) -> None:
        if show_progress:
            bar.write(message)
        else:
            print(message, file=sys.stderr)
    try:
        while pending or running:
            for job in list(pending):
                if len(running) >= workers:
                    break
                if any(a not in finished for a in job.after):
                    continue
                command = job.command(finished) if callable(job.command) else job.command
                log = (logs / f"{job.name}.log").open("w")
                log.write("$ " + " ".join(str(c) for c in command) + "\n")
                log.flush()
                if job.progress is not None:
                    job.progress.parent.mkdir(parents=True, exist_ok=True)
                    job.progress.write_text("")
                job.result.unlink(missing_ok=True)
                # a process group of its own: stopping the job also stops what it started (corpus workers)
                proc = subprocess.Popen([str(c) for c in command], stdout=log, stderr=subprocess.STDOUT, env=env,
                                        cwd=cwd, start_new_session=True)
                running[job.name] = (job, proc, log, time.time())
                pending.remove(job)
                say(f"started {job.name}")
            bar.set_postfix_str(", ".join(running) or "-")
            time.sleep(poll_s)
            for name, (job, proc, log, started) in list(running.items()):
                if job.progress is not None:
                    count = min(_count_lines(job.progress), job.units)
                    bar.update(count - counted.get(name, 0))
                    counted[name] = count
                if proc.poll() is None:
                    continue
                log.close()
                del running[name]
                if proc.returncode != 0 or not job.result.exists():
                    tail = (logs / f"{name}.log").read_text()[-3000:]
                    raise JobFailed(
                        f"Job {name!r} failed (exit code {proc.returncode}"
                        f"{'' if job.result.exists() else ', no ' + str(job.result)}); log {logs / (name + '.log')}:\n"
                        f"{tail}"
                    )
                bar.update(job.units - counted.get(name, 0))
                try:
                    finished[name] = json.loads(job.result.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    tail = (logs / f"{name}.log").read_text()[-3000:]
                    raise JobFailed(
                        f"Job {name!r} exited 0 but its result {job.result} is not JSON ({err}); log "
                        f"{logs / (name + '.log')}:\n{tail}"
                    ) from None
                message = on_finish(name, finished[name], time.time() - started) if on_finish else None
                say(message or f"finished {name} ({time.time() - started:.0f} s)")
    finally:
        for _, proc, log, _ in running.values():
            _stop(proc)
            log.close()
        bar.close()
    return {n: finished[n] for n in names}


def _stop(proc: subprocess.Popen) -> None:
    """Terminate a job and every process it started (its process group), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _refuse_cycles(jobs: Sequence[Job], finished: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the jobs that can never start (they wait for each other, or themselves)."""
    done = set(finished)
    waiting = [j for j in jobs if j.name not in done]
    while True:
        ready = [j for j in waiting if all(a in done for a in j.after)]
        if not ready:
            break
        done.update(j.name for j in ready)
        waiting = [j for j in waiting if j.name not in done]
    if waiting:
        raise ValueError(
            f"Jobs {[j.name for j in waiting]} wait for each other (or for themselves) through `after`; none could start."
        )


def percent(x: float | None, digits: int = 2) -> str:
    """A fraction as a percentage for results tables; ``None`` (not measured) as a dash.

    Example:
        >>> percent(0.0855), percent(0.19267, 1), percent(None)
        ('8.55 %', '19.3 %', '–')
    """
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def shown_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to ``root`` when it lies inside it (for results tables), else as given.

    Example:
        >>> shown_path("/repo/runs/base/x/base.ckpt", "/repo"), shown_path("/tmp/c.ckpt", "/repo")
        ('runs/base/x/base.ckpt', '/tmp/c.ckpt')
    """
    try:
        return str(Path(os.path.abspath(path)).relative_to(os.path.abspath(root)))
    except ValueError:
        return str(path)


def max_time(minutes: float) -> str:
    """Lightning's ``Trainer(max_time=...)`` string ``"DD:HH:MM:SS"`` for a wall-clock cap in minutes.

    Raises:
        ValueError: ``minutes`` is not a positive finite number.

    Example:
        >>> max_time(12.5), max_time(150)
        ('00:00:12:30', '00:02:30:00')
    """
    if isinstance(minutes, bool) or not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"Expected a positive finite number of minutes, but got {minutes!r}.")
    total = max(1, round(minutes * 60))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    mins, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{mins:02d}:{secs:02d}"


_RESULT_SUFFIXES = (".json", ".md", ".png")


def result_file(stem: str | os.PathLike, suffix: str) -> Path:
    """``<stem><suffix>``: a results stem may hold dots (``demo_lr1.5e-3``); a results suffix it ends in is replaced.

    Example:
        >>> str(result_file("docs/results/demo_lr1.5e-3", ".json")), str(result_file("out/base.json", ".md"))
        ('docs/results/demo_lr1.5e-3.json', 'out/base.md')
    """
    p = Path(stem)
    base = p.with_suffix("") if p.suffix in _RESULT_SUFFIXES else p
    return base.with_name(base.name + suffix)


def write_results(stem: str | os.PathLike, summary: Mapping[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` (``summary``, indented) and ``<stem>.md`` atomically; returns both paths.

    ``stem`` may contain dots (see :func:`result_file`).
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out_json, out_md = result_file(stem, ".json"), result_file(stem, ".md")
    write_atomic(out_json, json.dumps(summary, indent=2) + "\n")
    write_atomic(out_md, markdown if markdown.endswith("\n") else markdown + "\n")
    return out_json, out_md
