"""A stand-in for Slurm's sbatch, squeue and srun on one machine, for tests/test_grid_faults.py (no cluster needed).

    install(bin_dir, state_dir)   # writes bin_dir/{sbatch,squeue,srun,scancel}; put bin_dir first on PATH

sbatch <script>: records the script (state/<id>.sbatch), answers "Submitted batch job <id>" and, unless
FAKE_SLURM_HOLD=1, starts every array task of it at once in the background: `bash <script>` with the variables Slurm
sets (SLURM_JOB_ID = <id> + 1 + task index, a raw id distinct from the array's, SLURM_ARRAY_JOB_ID, _TASK_ID, ...).
With FAKE_SLURM_HOLD=1 the tasks stay pending (squeue lists them) until the test removes state/<id>_<task>.pending.
squeue -h -j <id> -o %i: the tasks of <id> (an array, or one array task <id>_<i>) still pending or running; an id
it never gave: "Invalid job id specified", exit 1, as Slurm says once a job is purged. While state/squeue_failures
holds a number above 0, squeue decrements it and fails as a busy controller does.
srun [options] command: runs the command with --output/--error (%A, %a, %j, %t expanded) as its stdout/stderr.
"""

import os
import re
import subprocess
import sys

NAMES = ("sbatch", "squeue", "srun", "scancel")


def install(bin_dir, state_dir):
    os.makedirs(bin_dir, exist_ok=True)
    os.makedirs(state_dir, exist_ok=True)
    for name in NAMES:
        path = os.path.join(bin_dir, name)
        with open(path, "w") as f:
            f.write(
                f"#!/bin/sh\nFAKE_SLURM_STATE={state_dir} exec {sys.executable} {os.path.abspath(__file__)} {name} "
                '"$@"\n'
            )
        os.chmod(path, 0o755)


def state(*parts):
    return os.path.join(os.environ["FAKE_SLURM_STATE"], *parts)


def sbatch(script):
    text = open(script).read()
    counter = state("next_id")
    job_id = int(open(counter).read()) if os.path.exists(counter) else 1000
    with open(counter, "w") as f:
        f.write(str(job_id + 100))
    with open(state(f"{job_id}.sbatch"), "w") as f:
        f.write(text)
    array = re.search(r"^#SBATCH --array=0-(\d+)", text, re.M)
    count = int(array.group(1)) + 1 if array else 1
    for task in range(count):
        name = f"{job_id}_{task}" if array else str(job_id)
        open(state(f"{name}.pending"), "w").close()
        env = dict(
            os.environ,
            SLURM_JOB_ID=str(job_id + 1 + task if array else job_id),
            SLURM_JOB_NUM_NODES="1",
            SLURM_NTASKS="1",
            SLURM_NODEID="0",
            SLURM_PROCID="0",
            SLURM_LOCALID="0",
            SLURM_JOB_NODELIST=os.uname().nodename,
            SLURMD_NODENAME=os.uname().nodename,
        )
        if array:
            env.update(SLURM_ARRAY_JOB_ID=str(job_id), SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_COUNT=str(count))
        # the task: wait while held, run the script, then leave the queue
        runner = 'while [ -e "$P" ] && [ "$HOLD" = 1 ]; do sleep 0.2; done; : > "$R"; rm -f "$P"; bash "$S"; rm -f "$R"'
        env.update(P=state(f"{name}.pending"), R=state(f"{name}.running"), S=script)
        env["HOLD"] = os.environ.get("FAKE_SLURM_HOLD", "0")
        with open(state(f"{name}.out"), "w") as log:
            subprocess.Popen(
                ["sh", "-c", runner], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
    print(f"Submitted batch job {job_id}")


def squeue(args):
    failures = state("squeue_failures")
    left = int(_read(failures)) if os.path.exists(failures) else 0
    if left > 0:
        with open(failures, "w") as f:
            f.write(str(left - 1))
        print("squeue: error: slurm_load_jobs error: Socket timed out on send/recv operation", file=sys.stderr)
        return 1
    with open(state("squeue_calls"), "a") as f:
        f.write(" ".join(args) + "\n")
    job = args[args.index("-j") + 1]
    base = job.split("_")[0]
    if not os.path.exists(state(f"{base}.sbatch")):
        print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
        return 1
    names = sorted({n.rsplit(".", 1)[0] for n in os.listdir(state()) if n.endswith((".pending", ".running"))})
    for name in names:
        if name == job or name.split("_")[0] == job:
            print(name)
    return 0


def _read(path):
    with open(path) as f:
        return f.read().strip() or "0"


def srun(args):
    env, out, err, i = os.environ, None, None, 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] in ("--output", "--error"):
            path = args[i + 1]
            for key, var in (("%A", "SLURM_ARRAY_JOB_ID"), ("%a", "SLURM_ARRAY_TASK_ID"), ("%j", "SLURM_JOB_ID")):
                path = path.replace(key, env.get(var, env.get("SLURM_JOB_ID", "")))
            path = path.replace("%t", "0")
            out, err = (path, err) if args[i] == "--output" else (out, path)
            i += 2
        else:
            i += 1
    stdout = open(out, "a") if out else None
    stderr = open(err, "a") if err else None
    return subprocess.run(args[i:], stdout=stdout, stderr=stderr).returncode


if __name__ == "__main__":
    name, rest = sys.argv[1], sys.argv[2:]
    if name == "sbatch":
        sbatch(rest[-1])
    elif name == "squeue":
        sys.exit(squeue(rest))
    elif name == "srun":
        sys.exit(srun(rest))
    else:  # scancel: nothing to cancel here
        sys.exit(0)
