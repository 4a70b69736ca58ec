"""Submit benchmark.sh's grid to Slurm as one job array (submitit): one array task per run.

    SLURM=1 PARTITION=gpu GPUS=1 CPUS=4 TIME=1440 bash benchmark.sh      # writes the grid, then calls:
    python scripts/slurm_grid.py runs/benchmark/slurm/grid.tsv --partition gpu --gpus 1 --cpus 4 --time 1440 [--wait]

grid.tsv, written by benchmark.sh: one run a line, `<run dir><TAB><command>`. Each array task runs its command from
the folder this script was started in, with OMP_NUM_THREADS = --cpus, appending to <run dir>/stdout.log as a local
run does; submitit's own logs go to <grid.tsv's folder>/logs.

Resubmitting is safe. A run with summary.json is not submitted, nor one whose last job (<run dir>/slurm_job_id) Slurm
still lists; an interrupted run resumes from <run dir>/checkpoint_last.pt, as benchmark.sh does locally (one stopped
before its first iteration ended starts again with --overwrite). A task that reaches its time limit is requeued by
submitit (Checkpointable) and resumes the same way.
"""

import argparse
import glob
import os
import shlex
import subprocess
import sys
import time

import submitit


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("grid", help="benchmark.sh's grid.tsv")
    parser.add_argument("--partition", default="", help="Slurm partition (default: the cluster's default)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per run")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs per run (also its OMP_NUM_THREADS)")
    parser.add_argument("--time", type=int, default=1440, help="time limit per run, minutes (then: requeued, resumed)")
    parser.add_argument("--mem-gb", type=int, default=None, help="memory per run (default: the partition's)")
    parser.add_argument("--parallel", type=int, default=None, help="array tasks running at once (default: all)")
    parser.add_argument("--wait", action="store_true", help="wait until the array is done; exit 1 if a run failed")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between squeue checks with --wait")
    return parser.parse_args()


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
        elif glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):  # stopped before its first iteration ended
            argv += ["--overwrite"]
        os.makedirs(run_dir, exist_ok=True)
        log_path = os.path.join(run_dir, "stdout.log")
        with open(log_path, "a") as log:
            log.write(f"[slurm] job {os.environ.get('SLURM_JOB_ID')} on {os.uname().nodename}: {shlex.join(argv)}\n")
            log.flush()
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if code != 0:
            raise RuntimeError(f"{run_dir} failed (exit {code}): {last_line(log_path)}")
        return f"{run_dir}: finished"


def last_line(path: str) -> str:
    with open(path) as f:
        lines = f.read().strip().splitlines()
    return lines[-1] if lines else ""


def queued(job_id: str) -> bool:
    """True while Slurm lists the job (pending, running, requeued)."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True)
    return out.returncode == 0 and bool(out.stdout.strip())


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
            print(f"  skip {run_dir} (queued already: job {job_id})")
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
    executor = submitit.SlurmExecutor(folder=os.path.join(os.path.dirname(cli.grid), "logs"))
    executor.update_parameters(
        job_name="cleandppo-grid",
        cpus_per_task=cli.cpus,
        time=cli.time,
        **({"partition": cli.partition} if cli.partition else {}),
        **({"gpus_per_node": cli.gpus} if cli.gpus else {}),
        **({"mem": f"{cli.mem_gb}G"} if cli.mem_gb else {}),
        **({"array_parallelism": cli.parallel} if cli.parallel else {}),
    )
    run_dirs, commands = zip(*todo)
    cwd = os.getcwd()
    jobs = executor.map_array(GridRun(), run_dirs, commands, [cwd] * len(todo), [cli.cpus] * len(todo))
    for run_dir, job in zip(run_dirs, jobs):
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "slurm_job_id"), "w") as f:
            f.write(job.job_id)
        print(f"  job {job.job_id}: {run_dir}")
    array_id = jobs[0].job_id.split("_")[0]
    print(f"[slurm] submitted array {array_id}: {len(jobs)} runs; logs in {executor.folder}")
    return array_id


if __name__ == "__main__":
    main()
