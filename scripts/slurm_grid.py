"""Submit benchmark.sh's grid to Slurm as one job array (submitit): one array task per run.

    SLURM=1 PARTITION=gpu GPUS=1 CPUS=4 TIME=1440 bash benchmark.sh      # writes the grid, then calls:
    python scripts/slurm_grid.py runs/benchmark/slurm/grid.tsv --partition gpu --gpus 1 --cpus 4 --time 1440 [--wait]

grid.tsv, written by benchmark.sh: one run a line, `<run dir><TAB><command>`. Each array task runs its command from
the folder this script was started in, with OMP_NUM_THREADS = --cpus, appending to <run dir>/stdout.log as a local
run does; submitit's own logs go to <grid.tsv's folder>/logs. The nodes must see the same files as the submit host
at the same paths: this repository, the run dirs and the Python environment (submitit starts each task with the
Python that runs this script; --setup lines, e.g. `module load ...` or `source venv/bin/activate`, run first).

Resubmitting is safe. A run with summary.json is not submitted, nor one whose last array task (<run dir>/slurm_job_id)
Slurm still lists; an interrupted run resumes from <run dir>/checkpoint_last.pt, as benchmark.sh does locally (one
stopped before its first iteration ended starts again with --overwrite). When squeue fails (a busy controller) it is
retried; if it keeps failing this script stops in one line and submits nothing: a run is never taken for "not
queued" on an squeue error.

Time limits: --signal-delay seconds before a task's limit Slurm sends it USR2 (submitit's signal); the run stops
there (its unfinished iteration is dropped) and submitit requeues the task (Checkpointable), which resumes from
checkpoint_last.pt; after --max-timeouts such requeues the task ends unfinished. Preemptions are requeued the same way,
without a limit.

Exit status: 0 when every run finished (or, without --wait, once the unfinished ones are queued), 1 when --wait ended
with runs unfinished (listed), 2 when Slurm could not be asked (squeue, sbatch) or an option is wrong.
"""

import argparse
import glob
import os
import shlex
import subprocess
import sys
import time

import submitit

SQUEUE_TRIES = int(os.environ.get("CLEANDPPO_SQUEUE_TRIES", 5))  # attempts per squeue question
SQUEUE_BACKOFF = float(os.environ.get("CLEANDPPO_SQUEUE_BACKOFF", 5.0))  # seconds before the 2nd try, doubling


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("grid", help="benchmark.sh's grid.tsv")
    parser.add_argument("--partition", default="", help="Slurm partition (default: the cluster's default)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per run")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs per run (also its OMP_NUM_THREADS)")
    parser.add_argument("--time", type=int, default=1440, help="time limit per run, minutes (then: requeued, resumed)")
    parser.add_argument("--mem-gb", type=int, default=None, help="memory per run (default: the partition's)")
    parser.add_argument("--parallel", type=int, default=None, help="array tasks running at once (default: all)")
    parser.add_argument("--account", default="", help="sbatch --account")
    parser.add_argument("--qos", default="", help="sbatch --qos")
    parser.add_argument("--constraint", default="", help="sbatch --constraint (node features, e.g. 'a100|h100')")
    parser.add_argument("--exclude", default="", help="sbatch --exclude (nodes to avoid, e.g. node[01-03])")
    parser.add_argument("--reservation", default="", help="sbatch --reservation")
    parser.add_argument(
        "--sbatch",
        default="",
        help="more sbatch options, each --name=value or --name, e.g. '--mail-type=END --nice=10'",
    )
    parser.add_argument(
        "--setup",
        default="",
        help="shell lines each task runs first, one a line, e.g. 'module load cuda' or 'source venv/bin/activate'",
    )
    parser.add_argument("--signal-delay", type=int, default=90, help="seconds before the time limit that USR2 comes")
    parser.add_argument("--max-timeouts", type=int, default=3, help="requeues after reaching the time limit, at most")
    parser.add_argument("--wait", action="store_true", help="wait until the array is done; exit 1 if a run failed")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between squeue checks with --wait")
    cli = parser.parse_args(argv)
    cli.additional = sbatch_options(cli.sbatch)
    for name in ("gpus", "signal_delay", "max_timeouts"):
        if getattr(cli, name) < 0:
            fail(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cli, name)}")
    for name in ("cpus", "time", "mem_gb", "parallel"):
        if getattr(cli, name) is not None and getattr(cli, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cli, name)}")
    return cli


def fail(message: str):
    print(f"[slurm] error: {message}", file=sys.stderr)
    sys.exit(2)


def sbatch_options(text: str) -> dict:
    """'--mail-type=END --requeue' as submitit's additional_parameters: {'mail_type': 'END', 'requeue': True}."""
    options = {}
    for word in shlex.split(text):
        name, has_value, value = word.partition("=")
        if not name.startswith("--") or len(name) < 3:
            fail(f"sbatch option {word!r} is not of the form --name=value or --name; e.g. --mail-type=END")
        options[name[2:].replace("-", "_")] = value if has_value else True
    return options


class GridRun(submitit.helpers.Checkpointable):
    """One run of the grid in its array task. At the time limit submitit calls checkpoint() (Checkpointable's: the
    same call again) and requeues the task, which then resumes from checkpoint_last.pt."""

    def __call__(self, run_dir: str, command: str, cwd: str, threads: int) -> str:
        os.chdir(cwd)
        if os.path.isfile(os.path.join(run_dir, "summary.json")):
            return f"{run_dir}: done already"
        argv = shlex.split(command)
        last = os.path.join(run_dir, "checkpoint_last.pt")
        if os.path.isfile(last):  # an interrupted run: resume it in place
            argv += ["--checkpoint", last]
        elif glob.glob(os.path.join(run_dir, "events.out.tfevents.*")) and not glob.glob(
            os.path.join(run_dir, "checkpoint_*")
        ):  # stopped before its first iteration ended (with numbered checkpoints only, the script names them)
            argv += ["--overwrite"]
        os.makedirs(run_dir, exist_ok=True)
        log_path = os.path.join(run_dir, "stdout.log")
        with open(log_path, "a") as log:
            log.write(f"[slurm] {job_ids()} on {os.uname().nodename}: {shlex.join(argv)}\n")
            log.flush()
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if code != 0:
            raise RuntimeError(f"{run_dir} failed (exit {code}): {last_line(log_path)}")
        return f"{run_dir}: finished"


def job_ids() -> str:
    """This task's two Slurm ids, named: the array task (what squeue, scancel, <run dir>/slurm_job_id and the
    submit console show) and the job id Slurm gave the task itself (SLURM_JOB_ID: sacct, node logs). A grid of one
    run is one plain job: its one id."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" not in env:  # a grid of one run is submitted as a plain job
        return f"job {env.get('SLURM_JOB_ID')} (not an array task)"
    array = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID')}"
    return f"array task {array} (SLURM_JOB_ID {env.get('SLURM_JOB_ID')})"


def last_line(path: str) -> str:
    with open(path) as f:
        lines = f.read().strip().splitlines()
    return lines[-1] if lines else ""


def queued(job_id: str) -> bool:
    """True while Slurm lists the job (pending, running, requeued); False once it is done (squeue prints nothing, or
    says the id is no longer known). Any other squeue failure (a busy or unreachable controller) is retried
    SQUEUE_TRIES times with a doubling pause, then stops this script in one line: it is never read as "not queued"."""
    error = ""
    for attempt in range(SQUEUE_TRIES):
        if attempt:
            time.sleep(SQUEUE_BACKOFF * 2 ** (attempt - 1))
        try:
            out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            error = str(e)
            continue
        if out.returncode == 0:
            return bool(out.stdout.strip())
        error = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
        if "invalid job id" in error.lower():  # finished long enough ago that the controller forgot it
            return False
    fail(
        f"squeue -j {job_id} failed {SQUEUE_TRIES} times ({error}); the Slurm controller may be busy or down: rerun "
        "this command later (finished runs are kept; nothing was submitted twice)"
    )


def main():
    cli = parse_args()
    with open(cli.grid) as f:
        grid = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    todo, waiting = [], set()  # runs to submit; jobs queued already (--wait waits for them too)
    for run_dir, command in grid:
        job_file = os.path.join(run_dir, "slurm_job_id")
        job_id = open(job_file).read().strip() if os.path.isfile(job_file) else None
        if os.path.isfile(os.path.join(run_dir, "summary.json")):
            print(f"  skip {run_dir} (done)")
        elif job_id and queued(job_id):
            print(f"  skip {run_dir} (queued already: array task {job_id})")
            waiting.add(job_id)
        else:
            todo.append((run_dir, command))
    if todo:
        waiting.add(submit(cli, todo))
    else:
        print("[slurm] nothing to submit")
    if not cli.wait:
        return
    while any(queued(job_id) for job_id in waiting):
        time.sleep(cli.poll)
    failed = [d for d, _ in grid if not os.path.isfile(os.path.join(d, "summary.json"))]
    for run_dir in failed:
        log_path = os.path.join(run_dir, "stdout.log")
        print(f"  FAILED: {run_dir}: {last_line(log_path) if os.path.isfile(log_path) else 'no stdout.log'}")
    print(f"[slurm] grid done: {len(grid) - len(failed)} runs finished, {len(failed)} not")
    sys.exit(1 if failed else 0)


def submit(cli, todo: list) -> str:
    """Submit `todo` ((run dir, command) pairs) as one job array; returns its job id."""
    executor = submitit.SlurmExecutor(
        folder=os.path.join(os.path.dirname(cli.grid), "logs"), max_num_timeout=cli.max_timeouts
    )
    optional = dict(
        partition=cli.partition,
        gpus_per_node=cli.gpus,
        mem=f"{cli.mem_gb}G" if cli.mem_gb else None,
        array_parallelism=cli.parallel,
        account=cli.account,
        qos=cli.qos,
        constraint=cli.constraint,
        exclude=cli.exclude,
        setup=[line for line in cli.setup.splitlines() if line.strip()],
    )
    additional = dict({"reservation": cli.reservation} if cli.reservation else {}, **cli.additional)
    executor.update_parameters(
        job_name="cleandppo-grid",
        cpus_per_task=cli.cpus,
        time=cli.time,
        signal_delay_s=cli.signal_delay,
        **{k: v for k, v in optional.items() if v},
        **({"additional_parameters": additional} if additional else {}),
    )
    run_dirs, commands = zip(*todo)
    cwd = os.getcwd()
    try:
        jobs = executor.map_array(GridRun(), run_dirs, commands, [cwd] * len(todo), [cli.cpus] * len(todo))
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError) as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else e.__class__.__name__
        fail(f"sbatch refused the array ({reason}); fix that option or the cluster's setting, then rerun")
    for run_dir, job in zip(run_dirs, jobs):
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "slurm_job_id"), "w") as f:
            f.write(job.job_id)
        print(f"  {'array task' if '_' in job.job_id else 'job'} {job.job_id}: {run_dir}")
    array_id = jobs[0].job_id.split("_")[0]
    what = f"array {array_id}: {len(jobs)} runs" if len(jobs) > 1 else f"job {array_id}: 1 run"
    print(f"[slurm] submitted {what}; logs in {executor.folder}")
    return array_id


if __name__ == "__main__":
    main()
