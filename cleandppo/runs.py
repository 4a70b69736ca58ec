"""Run plumbing every cleandppo script shares (envs.py holds the environments and data, arguments.py the command line).

Nothing algorithmic lives here. Read top to bottom:
  1. run dir      -- checked before anything is written; an existing run is resumed in place or refused;
                     one process at a time writes it (a lock)
  2. non-finite   -- rewards, observations, losses and weights; the run stops in one line, the last
                     good checkpoint stays
  3. checkpoints  -- the state an exact resume needs (envs, RNGs), the wall time so far; what Ctrl-C and a full
                     disk do
  4. summary      -- summary.json (strict JSON) and peak memory
  5. evaluations  -- the same calls in every script's `main` (the video: envs.capture_video; the progress
                     lines and bars: console.py)
  6. the run around the loop -- start, open_run_dir, evaluate_only, resume_or_evaluate, start_envs,
                     log_stats, checkpoint_state, save_run: main keeps the loop and calls these
  7. processes and threads -- the plan of workers.plan_parallel kept on a resume, torch's threads per phase (phase)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

import numpy as np

from cleandppo import avoid, console, envs, workers

# ------------------------------------------------------------------------------------------------
# 1. Run dir: checked first, created only once every input is checked (open_run)
# ------------------------------------------------------------------------------------------------
RUN_FILES = ("checkpoint_last.pt", "summary.json", "pretrained.pt")
LOCK_FILE = ".run.lock"  # held (fcntl.lockf) by the process writing the run; see lock_run_dir
PRETRAIN_STATE = "pretrained_last.pt"  # what an interrupted pre-training continues from (pretraining.py)
# settings a continued pre-training may change: where it writes and logs, and how it uses the machine
CONTINUE_FREE = ("run_dir", "overwrite", "track", "capture_video", "eval_episodes", "eval_freq", "save_freq")
CONTINUE_FREE += ("pretrain_save_freq", "env_workers", "sampling_threads", "update_threads", "rollout_parts")
# what the Ctrl-C message names (run_cli); the lock this process holds; this segment's clock and the earlier segments'
# seconds (the resumed checkpoint's wall_time_s); whether this segment resumed and saved an iteration (finish_run)
_run = {"dir": None, "resume_from": None, "lock": None, "clock": None, "wall_before": 0.0, "resumed": False}


def is_run_file(name: str) -> bool:
    """A file that only a run writes: a checkpoint (checkpoint_last.pt, checkpoint_<iter>.pt, pretrained.pt,
    pretrained_<epoch>.pt, and their .tmp while being written), summary.json or TensorBoard events."""
    return name in RUN_FILES or name.startswith(("checkpoint_", "pretrained_", "events.out.tfevents"))


def holds_run(path: str) -> bool:
    """True when `path` holds a run's checkpoint (any of them), summary or TensorBoard events."""
    return os.path.isdir(path) and any(is_run_file(n) for n in os.listdir(path))


def newest_checkpoint(run_dir: str) -> str | None:
    """The checkpoint a run in `run_dir` resumes from: checkpoint_last.pt, else its highest checkpoint_<iter>.pt."""
    last = os.path.join(run_dir, "checkpoint_last.pt")
    if os.path.isfile(last):
        return last
    numbered = [n[len("checkpoint_") : -len(".pt")] for n in os.listdir(run_dir) if n.startswith("checkpoint_")]
    iterations = [int(n) for n in numbered if n.isdigit()]
    return os.path.join(run_dir, f"checkpoint_{max(iterations)}.pt") if iterations else None


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock of the open file `fd` without waiting; False when another process holds it. A file
    system without locks (some network mounts) says so in one line and the run goes on unlocked."""
    import errno
    import fcntl

    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return False
        print(f"[run] cannot lock the run dir ({e.strerror}): a second run into it would not be refused", flush=True)
    return True


def run_dir_user(run_dir: str) -> str | None:
    """Who holds `run_dir`'s lock ("pid <pid> on <host>"), or None when no other process does."""
    try:
        fd = os.open(os.path.join(run_dir, LOCK_FILE), os.O_RDWR)
    except OSError:
        return None
    try:
        return None if _try_lock(fd) else os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)  # drops the probe's own lock


def release_run_lock():
    """Drop the lock this process holds on a run dir (a run of this process ended; exiting drops it too)."""
    if _run["lock"] is not None:
        os.close(_run["lock"])
        _run["lock"] = None


def lock_run_dir(run_dir: str):
    """Hold <run_dir>/.run.lock while this process writes the run, so that a second run into the same dir (two
    starts at once, or a resume while the run still goes) is refused in one line. A POSIX record lock (fcntl.lockf):
    the kernel drops it when the process ends however it ends (kill -9, a node lost) and forked workers do not
    inherit it, so a killed run never leaves it stuck."""
    release_run_lock()
    fd = os.open(os.path.join(run_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    if not _try_lock(fd):
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        envs.fail(in_use(run_dir, holder))
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
    _run["lock"] = fd


def in_use(run_dir: str, holder: str) -> str:
    return f"--run-dir {run_dir} is in use by another run ({holder}); wait for it to end, or pick another --run-dir"


def refuse_run_dir(run_dir: str):
    last = newest_checkpoint(run_dir)
    resume = f"resume it with --checkpoint {last}, " if last else ""
    envs.fail(
        f"--run-dir {run_dir} already holds a run; {resume}pass --overwrite to replace it, or pick another --run-dir"
    )


def check_writable(run_dir: str):
    """One-line errors for a run dir that is a file, lies below a file, or under a read-only directory."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        envs.fail(f"--run-dir {run_dir} is a file; pass a directory path, e.g. --run-dir {run_dir}.d")
    parent = os.path.abspath(run_dir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        envs.fail(f"--run-dir {run_dir} lies below the file {parent}; pass a path under a directory")
    fallback = os.path.join(tempfile.gettempdir(), os.path.basename(os.path.normpath(run_dir)))
    try:  # os.access says yes to root on a read-only file system: try it
        os.rmdir(tempfile.mkdtemp(dir=parent))
    except OSError as e:
        envs.fail(f"cannot write under {parent} ({e.strerror}); pass a writable --run-dir, e.g. --run-dir {fallback}")


def interrupted_pretraining(run_dir: str, args) -> dict | None:
    """The PRETRAIN_STATE an interrupted pre-training left in `run_dir`, or its pretrained.pt when it was killed in
    its closing evaluation (no summary.json), which this pre-training run continues (the same command rerun: other
    settings but CONTINUE_FREE stop it in one line); None when there is neither, or when fine-tuning had begun (that
    run resumes from its checkpoint instead)."""
    path = os.path.join(run_dir, PRETRAIN_STATE)
    if os.path.isdir(run_dir) and newest_checkpoint(run_dir):
        return None
    if not os.path.isfile(path):
        path = os.path.join(run_dir, "pretrained.pt")
        if not os.path.isfile(path) or os.path.isfile(os.path.join(run_dir, "summary.json")):
            return None
    import torch

    state, ours = torch.load(path, map_location="cpu", weights_only=False), asdict(args)
    for key, value in state["args"].items():
        if key not in CONTINUE_FREE and ours.get(key) != value:
            envs.fail(
                f"{path} is a pre-training interrupted with --{key.replace('_', '-')} {value}, not {ours.get(key)}; "
                "rerun its command to continue it, or pass --overwrite to start over"
            )
    print(f"[resume] pre-training continues from {path} (epoch {state['pretrain_epochs']}/{args.pretrain_epochs})")
    return dict(epochs=state["pretrain_epochs"], wall_time_s=state.get("wall_time_s", 0.0))


def prepare_run_dir(args, algo: str, resume_path: str | None = None, pretrains: bool = False) -> str:
    """The run dir of this run, checked but not created. `resume_path`: the checkpoint this run resumes (its own
    algo's, with training state); its dir is the default run dir and may hold a run. A run that `pretrains` into
    the dir of an interrupted pre-training continues it (interrupted_pretraining). Any other dir that holds a
    run is refused unless --overwrite. --track needs wandb. Call before loading data; open_run creates the dir."""
    resume_path = None if getattr(args, "eval_only", False) else resume_path  # an evaluation writes a run of its own
    resume_dir = os.path.dirname(os.path.abspath(resume_path)) if resume_path else None
    run_dir = args.run_dir or resume_dir
    if run_dir is None:
        run_dir = os.path.join("runs", f"{envs.env_slug(args.env_id)}__{algo}__{args.seed}__{int(time.time())}")
    check_writable(run_dir)
    release_run_lock()  # a new run of this process: the last one (in-process callers) is over
    holder = run_dir_user(run_dir)
    if holder:
        envs.fail(in_use(run_dir, holder))
    resuming_here = resume_dir is not None and os.path.abspath(run_dir) == resume_dir
    overwrite = getattr(args, "overwrite", False)
    _run["pretrain_state"] = interrupted_pretraining(run_dir, args) if pretrains and not overwrite else None
    may_hold_run = resuming_here or overwrite or _run["pretrain_state"] is not None
    if holds_run(run_dir) and not may_hold_run:
        refuse_run_dir(run_dir)
    if getattr(args, "track", False):
        try:
            import wandb  # noqa: F401
        except ImportError:
            envs.fail("--track needs Weights & Biases: pip install -r requirements-wandb.txt (or run without --track)")
    _run.update(dir=run_dir, resume_from=resume_path, may_hold_run=may_hold_run, pretrains=pretrains)
    console.current["per_iter"] = (
        getattr(args, "num_envs", 0) * getattr(args, "n_steps", 0) * getattr(args, "act_steps", 0)
    )
    return run_dir


def open_run(run_dir: str, args, resume_step: int | None = None):
    """Create the run dir and return its TensorBoard writer. A resume (`resume_step`: the checkpoint's env steps)
    appends to the run's curves: events a killed run logged after its checkpoint are dropped (purge_step).
    A fresh run with --overwrite first deletes the old run's files (but the --checkpoint it starts from). The dir is
    locked first (lock_run_dir): a second run started into it at the same time stops in one line."""
    from torch.utils.tensorboard import SummaryWriter

    resume_step = None if getattr(args, "eval_only", False) else resume_step
    os.makedirs(run_dir, exist_ok=True)
    lock_run_dir(run_dir)
    if not _run.get("may_hold_run", True) and holds_run(run_dir):  # written since prepare_run_dir looked
        refuse_run_dir(run_dir)
    _run.update(clock=time.time(), wall_before=0.0, resumed=resume_step is not None, saved=False)
    if _run.get("pretrain_state"):  # a continued pre-training: its time so far, its curves from its last state on
        _run["wall_before"] = _run["pretrain_state"]["wall_time_s"]
        resume_step = _run["pretrain_state"]["epochs"] - 1  # pretrain/* scalars are logged at the 0-based epoch
    if resume_step is None and getattr(args, "overwrite", False) and holds_run(run_dir):
        loaded = os.path.abspath(args.checkpoint) if getattr(args, "checkpoint", None) else None
        for name in os.listdir(run_dir):
            path = os.path.join(run_dir, name)
            if is_run_file(name) and os.path.abspath(path) != loaded:  # never the checkpoint this run starts from
                os.remove(path)
        shutil.rmtree(os.path.join(run_dir, "wandb"), ignore_errors=True)
    if resume_step is not None:  # TensorBoard reads event files in name order: the new one must sort last
        names = [n.split(".") for n in os.listdir(run_dir) if n.startswith("events.out.tfevents.")]
        latest = max((int(n[3]) for n in names if n[3].isdigit()), default=0)  # the file's creation second
        while int(time.time()) <= latest:
            time.sleep(0.05)
    if args.track:  # before the writer: W&B syncs the TensorBoard writers created after its init
        import wandb

        # a resumed run is a new W&B run; TensorBoard's files in run_dir hold the continued curves. W&B's own files go
        # where W&B puts them by default, ./wandb (or $WANDB_DIR), never under run_dir: W&B copies the event files it
        # syncs into its folder, and inside run_dir it would sync its own copies again and again (nested folders that
        # TensorBoard and scripts/plot_results.py would read as more runs). WANDB_MODE=offline: `wandb sync
        # wandb/offline-run-*` uploads them later.
        wandb.init(project="cleandppo", config=vars(args), name=os.path.basename(run_dir), sync_tensorboard=True)
        print(f"[track] W&B run {os.path.basename(run_dir)}: W&B's files in {os.path.dirname(wandb.run.dir)}")
    writer = SummaryWriter(run_dir, purge_step=None if resume_step is None else resume_step + 1)
    table = "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
    return writer


# ------------------------------------------------------------------------------------------------
# 2. Non-finite values: stop where they enter, keep the last good checkpoint
# ------------------------------------------------------------------------------------------------
def all_finite(value) -> bool:
    """True when every number in `value` (array, tensor, float, module's weights, dict of these) is finite."""
    import torch

    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, torch.nn.Module):
        return all(bool(torch.isfinite(p).all()) for p in value.parameters())
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    return bool(np.isfinite(np.asarray(value, dtype=np.float64)).all())


def check_finite(iteration: int, **values):
    """Stop in one line when one of `values` (name=value) holds a NaN or an infinity; `iteration`: the loop's
    0-based counter of the iteration under way. Nothing is saved, so checkpoint_last.pt stays the last good one."""
    for name, value in values.items():
        if all_finite(value):
            continue
        envs.fail(
            f"non-finite {name.replace('_', ' ')} in iteration {iteration + 1}; {stopped()}; "
            "check the environment's rewards and observations, or lower the learning rates"
        )


def stopped() -> str:
    """What a run that stops now keeps, for its one-line message: its checkpoint_last.pt, or nothing."""
    last = os.path.join(_run["dir"] or ".", "checkpoint_last.pt")
    kept = f"{last} is the last good checkpoint" if os.path.isfile(last) else "no checkpoint was written"
    return f"the run stopped and {kept}"


# ------------------------------------------------------------------------------------------------
# 3. Checkpoints at iteration boundaries; Ctrl-C
# ------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Every random generator a script draws from: Python, numpy's global, torch CPU (and CUDA)."""
    import torch

    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def vec_env_state(vec) -> dict:
    """What continuing a vector env needs: each env's envs.ChunkedEnv.run_state and the action-space RNG (Avoid's
    batched AvoidVectorEnv: its own state arrays)."""
    if isinstance(vec, avoid.AvoidVectorEnv):
        return dict(avoid=vec.get_state())
    return dict(envs=list(vec.get_attr("run_state")), action_rng=vec.action_space.np_random.bit_generator.state)


def restore_vec_env(vec, state: dict):
    """Put a (freshly reset) vector env back in the state vec_env_state recorded."""
    if "avoid" in state:
        vec.set_state(state["avoid"])
        return
    vec.set_attr("run_state", list(state["envs"]))
    vec.action_space.np_random.bit_generator.state = state["action_rng"]


def run_state(vec, obs, firsts, recent_returns) -> dict:
    """The checkpoint entries restore_run reads: every RNG, the envs mid-episode, the rollout's carry-over."""
    state = dict(rng=rng_state(), vec_env=vec_env_state(vec), obs=obs, firsts=firsts)
    return dict(state, recent_returns=recent_returns[-50:])


def restore_run(resume: dict, vec, obs, firsts):
    """Continue exactly where checkpoint `resume` stopped (run_state's entries); returns (obs, firsts, recent_returns).
    A checkpoint without them (cleandppo before exact resume) restores the global RNGs and keeps the fresh envs."""
    # the earlier segments' seconds (wall_time); this segment's clock starts here, where the scripts' own does
    _run.update(wall_before=float(resume.get("wall_time_s") or 0.0), clock=time.time())
    check_num_envs(resume, vec)
    if "vec_env" not in resume:
        print("[resume] this checkpoint holds no env state: the environments restart from fresh episodes")
        set_rng_state(dict(python=random.getstate(), numpy=resume["numpy_rng"], torch=resume["torch_rng"]))
        return obs, firsts, []
    restore_vec_env(vec, resume["vec_env"])
    set_rng_state(resume["rng"])
    return resume["obs"], resume["firsts"], list(resume["recent_returns"])


def saved_num_envs(vec_state: dict) -> int:
    """How many envs vec_env_state recorded."""
    if "avoid" in vec_state:
        return len(vec_state["avoid"]["episode_return"])
    return len(vec_state["envs"])


def check_num_envs(resume: dict, vec):
    """A resume continues the checkpoint's envs mid-episode (and its per-env reward statistics): --num-envs must be
    the checkpoint's, else one line naming the flag to pass."""
    saved = (resume.get("args") or {}).get("num_envs")
    if saved is None and "vec_env" in resume:
        saved = saved_num_envs(resume["vec_env"])
    if saved is not None and saved != vec.num_envs:
        envs.fail(
            f"this checkpoint ran {saved} envs and a resume continues them mid-episode; pass --num-envs {saved} "
            "(and the first run's other flags)"
        )


def buffer_state(buffer) -> dict:
    """A replay buffer's counters and the filled rows of its arrays (every buffer here keeps rows along axis 0)."""
    return {k: v[: buffer.size] if isinstance(v, np.ndarray) else v for k, v in vars(buffer).items()}


def restore_buffer(buffer, resume: dict):
    """Refill `buffer` from checkpoint_last.pt's replay_buffer; other checkpoints hold none: it starts empty."""
    if "replay_buffer" not in resume:
        print("[resume] this checkpoint holds no replay buffer (only checkpoint_last.pt does): it starts empty")
        return
    for key, value in resume["replay_buffer"].items():
        if key == "actions" and not hasattr(buffer, "actions"):  # dipo/idql checkpoints before "chunks" was the name
            key = "chunks"
        if isinstance(value, np.ndarray):
            getattr(buffer, key)[: len(value)] = value
        else:
            setattr(buffer, key, value)


def save_iteration(
    state: dict,
    run_dir: str,
    iteration: int,
    save_freq: int,
    num_iters: int,
    writer=None,
    last_only: dict | None = None,
):
    """At an iteration boundary: flush the curves, then write checkpoint_last.pt (with `last_only` too, e.g. the replay
    buffer) and checkpoint_<iteration>.pt every `save_freq` iterations and at the end, each atomically: a kill
    leaves the last finished iteration. Both hold `wall_time_s`, the run's seconds so far over all its segments
    (wall_time). A full disk stops the run in one line (envs.save_checkpoint); the previous checkpoint stays."""
    if writer is not None:
        try:
            writer.flush()
        except OSError as e:
            envs.fail(envs.write_failed(run_dir, e))
    if _run["clock"] is not None:
        state = dict(state, wall_time_s=wall_time(time.time() - _run["clock"]))
    envs.save_checkpoint(dict(state, **(last_only or {})), os.path.join(run_dir, "checkpoint_last.pt"))
    if iteration % save_freq == 0 or iteration == num_iters:
        envs.save_checkpoint(state, os.path.join(run_dir, f"checkpoint_{iteration}.pt"))
    _run["saved"] = True


def wall_time(segment: float) -> float:
    """The run's wall time: `segment` (this process's seconds) plus those of the segments before it (the resumed
    checkpoint's wall_time_s; 0 for a fresh run). Time a killed segment spent after its last checkpoint is lost."""
    return _run["wall_before"] + segment


def elapsed() -> float:
    """The run's wall time so far: this segment's, from open_run, plus the segments' before it (wall_time)."""
    return wall_time(time.time() - _run["clock"]) if _run["clock"] is not None else 0.0


def run_cli(main, *main_args):
    """Run a script's main; Ctrl-C drops the unfinished iteration and ends in one line naming the checkpoint to
    resume from (checkpoint_last.pt holds the last finished iteration), exit code 130."""
    import errno

    try:
        main(*main_args)
    except OSError as e:  # a write that failed outside a checkpoint (TensorBoard's events): one line too
        if e.errno not in (errno.ENOSPC, errno.EDQUOT) or not _run["dir"]:
            raise
        raise SystemExit(f"error: {envs.write_failed(_run['dir'], e)}") from None
    except KeyboardInterrupt:
        console.close_bars()  # the bars end their line first: the message gets its own, and nothing redraws over it
        last = os.path.join(_run["dir"] or ".", "checkpoint_last.pt")
        resume = last if _run["dir"] and os.path.isfile(last) else _run["resume_from"]
        where = f"resume with --checkpoint {resume}" if resume else "no iteration finished, nothing to resume"
        where = f"the unfinished iteration was dropped; {where}"
        kept = [os.path.join(_run["dir"] or ".", name) for name in (PRETRAIN_STATE, "pretrained.pt")]
        kept = [path for path in kept if os.path.isfile(path)]
        if _run.get("pretrains") and kept:  # (interrupted_pretraining)
            where = f"the pre-training goes on from {kept[0]} when the same command is run again"
        print(f"interrupted: {where}", file=sys.stderr)
        raise SystemExit(130) from None


# ------------------------------------------------------------------------------------------------
# 4. Summary
# ------------------------------------------------------------------------------------------------
def write_summary(
    run_dir: str, algo: str, args, env_steps: int, wall: float, pretrained, final, best, success=(), **extra
):
    """summary.json of a run (read by benchmark.sh, scripts/summarize.py); `success`: robomimic's 3 success rates.
    Strict JSON: a number that is missing or not finite (no evaluation yet) is null. Written atomically; a failed
    write (a full disk) is one line."""
    rates = {f"{k}_eval_success_rate": v for k, v in zip(("pretrained", "final", "best"), success or ())}
    summary = dict(
        algo=algo,
        env_id=args.env_id,
        seed=args.seed,
        env_steps=int(env_steps),
        wall_time_s=wall,
        pretrained_eval_return=pretrained,
        final_eval_return=final,
        best_eval_return=best,
        args=asdict(args),
        **code_version(),
        **extra,
        **rates,
    )
    path = os.path.join(run_dir, "summary.json")
    try:
        with open(path + ".tmp", "w") as f:
            json.dump(json_safe(summary), f, indent=2, default=str, allow_nan=False)
        os.replace(path + ".tmp", path)
    except OSError as e:
        try:
            os.remove(path + ".tmp")
        except OSError:
            pass
        envs.fail(envs.write_failed(path, e))
    print(f"[done] summary in {path}")


def code_version(where: str | None = None) -> dict:
    """The code a run used, for its summary: `git_commit`, the full hash of HEAD of the git checkout holding `where`
    (default: the cleandppo package), and `git_dirty`, whether that checkout had changes (`git status --porcelain`
    not empty: uncommitted or untracked files). Both None outside a git checkout or without git."""
    where = where or os.path.dirname(os.path.abspath(__file__))

    def git(*command):
        try:
            out = subprocess.run(["git", "-C", where, *command], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit, status = git("rev-parse", "HEAD"), git("status", "--porcelain")
    if commit is None or status is None:
        return dict(git_commit=None, git_dirty=None)
    return dict(git_commit=commit.strip(), git_dirty=bool(status.strip()))


def json_safe(value):
    """`value` with every non-finite float (NaN, +-inf) as None, in dicts, lists and tuples; numpy scalars as
    Python numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def finish_run(run_dir: str, algo: str, args, env_steps: int, wall: float, evals, device, writer, act, normalization):
    """End a run: summary.json first (the evaluations, peak memory), then with --capture-video one evaluation episode
    of `act` as an mp4 (a task that cannot render says so in one line and the summary is kept), then close the
    TensorBoard writer and drop the run dir's lock. `wall`: the seconds of this segment; a resumed run adds those of
    the segments before (wall_time). A resume that had nothing left to do (its checkpoint is the final iteration)
    keeps the summary.json it finds; without one it writes the checkpoint's (its evaluations and wall time).
    summary.json's `parallel`: the env workers and threads the run used (plan_parallel)."""
    path = os.path.join(run_dir, "summary.json")
    nothing_done = _run["resumed"] and not _run.get("saved")  # resumed from its final checkpoint
    if nothing_done and os.path.isfile(path):
        print(f"[done] nothing left to do: the run had finished; {path} kept")
    else:
        wall = wall_time(0.0 if nothing_done else wall)
        extra = dict(peak_memory_mb=peak_memory_mb(device), parallel=_run.get("plan"))
        write_summary(run_dir, algo, args, env_steps, wall, **evals.summary(), **extra)
    if args.capture_video:
        envs.capture_video(run_dir, args.env_id, act, args.act_steps, args.cond_steps, normalization, args.seed)
    writer.close()
    release_run_lock()
    workers.set_threads(_run.pop("given_threads", None))  # the process's own count again (in-process callers)


def peak_memory_mb(device) -> float:
    """Peak GPU memory (MB) since the last reset on CUDA; peak resident memory of the process on CPU."""
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------------
# 5. Evaluations (their progress lines: console.py)
# ------------------------------------------------------------------------------------------------
class Evaluations:
    """The evaluations of a run: the pre-trained policy's (first), the last and the best, of the return and, on
    robomimic tasks, of the success rate. Logged as eval/episodic_return and eval/success_rate at env steps; kept
    in the checkpoint (state_dict) so a resumed run reports the same summary."""

    def __init__(self, writer, robomimic: bool):
        self.writer, self.robomimic = writer, robomimic
        self.pretrained = self.pretrained_success = None
        self.last = self.last_success = float("nan")
        self.best = self.best_success = -np.inf
        self.count = 0  # evaluations so far (1: only that of the policy the run started from)

    def add(self, env_steps: int, mean_return: float, success: float):
        if self.pretrained is None:
            self.pretrained, self.pretrained_success = mean_return, success
        self.last, self.last_success, self.count = mean_return, success, self.count + 1
        self.best, self.best_success = max(self.best, mean_return), max(self.best_success, success)
        self.writer.add_scalar("eval/episodic_return", mean_return, env_steps)
        if self.robomimic:
            self.writer.add_scalar("eval/success_rate", success, env_steps)

    def run(self, env_steps: int, act, args, normalization) -> tuple[float, float, float]:
        """Evaluate the action function `act` over --eval-episodes episodes (envs.run_episodes; env i seeded with
        --seed + 10000 + i), record the result at `env_steps` and return (mean return, its std, success rate:
        the fraction of returns > 0, meaningful on robomimic's 0/1 reward). An EvalProgress shows where it is. It
        samples at the run's sampling threads, in the run's env worker processes (section 7)."""
        what = "before training" if self.count == 0 and env_steps == 0 else f"at {env_steps} steps"
        rounds = -(-args.eval_episodes // envs.eval_envs_at_once(args.env_id, args.eval_episodes))
        most = rounds * (envs.max_episode_steps(args.env_id) // args.act_steps + 1)
        watch = console.EvalProgress(args.eval_episodes, most, what)

        def watched(obs):
            watch.tick()
            return act(obs)

        before = workers.set_threads(_run["plan"]["sampling_threads"]) if _run.get("plan") else None
        try:
            returns, _ = envs.run_episodes(
                watched,
                args.env_id,
                args.eval_episodes,
                args.seed + 10_000,
                args.act_steps,
                args.cond_steps,
                normalization,
                _run["plan"]["env_workers"] if _run.get("plan") else 1,
                stopped,
            )
        finally:
            watch.close()
            workers.set_threads(before)
        mean, std, success = float(np.mean(returns)), float(np.std(returns)), envs.success_rate(returns)
        self.add(env_steps, mean, success)
        return mean, std, success

    def state_dict(self) -> dict:
        state = dict(pretrained_eval_return=self.pretrained, final_eval_return=self.last, best_eval_return=self.best)
        state.update(eval_count=self.count)
        if self.robomimic:
            state.update(pretrained_eval_success_rate=self.pretrained_success, best_eval_success_rate=self.best_success)
            state.update(final_eval_success_rate=self.last_success)
        return state

    def load_state_dict(self, state: dict):
        self.pretrained, self.best = state["pretrained_eval_return"], state["best_eval_return"]
        # the last evaluation: a resumed run's progress line shows it, a resume with nothing left writes it
        self.last = state.get("final_eval_return", float("nan"))  # older checkpoints: none
        self.pretrained_success = state.get("pretrained_eval_success_rate")
        self.best_success = state.get("best_eval_success_rate", -np.inf)
        self.last_success = state.get("final_eval_success_rate", float("nan"))
        self.count = state.get("eval_count", 2)  # older checkpoints: not only the first evaluation, nothing marked

    def summary(self) -> dict:
        """write_summary's pretrained/final/best and success arguments."""
        success = (self.pretrained_success, self.last_success, self.best_success) if self.robomimic else ()
        return dict(pretrained=self.pretrained, final=self.last, best=self.best, success=success)


def seed_everything(args):
    """Seed Python, numpy and torch with --seed, make cuDNN deterministic as --torch-deterministic says, and return
    the device: CUDA when it is available and --cuda, else the CPU."""
    import torch

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    return torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")


def log_iteration(
    writer, env_steps: int, steps_per_second: float, t_rollout: float, t_update: float, device, successes: list
):
    """The charts every script logs after an iteration: charts/SPS, time/rollout_s, time/update_s,
    charts/peak_memory_mb and, when episodes reported success (robomimic), charts/success_rate."""
    writer.add_scalar("charts/SPS", int(steps_per_second), env_steps)
    writer.add_scalar("time/rollout_s", t_rollout, env_steps)
    writer.add_scalar("time/update_s", t_update, env_steps)
    writer.add_scalar("charts/peak_memory_mb", peak_memory_mb(device), env_steps)
    if successes:
        writer.add_scalar("charts/success_rate", np.mean(successes), env_steps)


def log_episodes(writer, infos: dict, env_steps: int, recent_returns: list, successes: list):
    """Log the episodes that ended in this vector step (charts/episodic_return and _length at `env_steps`), append
    their returns to `recent_returns` and, on robomimic tasks, their success flags to `successes`, and move the run's
    Progress to `env_steps`."""
    for r, length in zip(*envs.finished_episodes(infos)):
        recent_returns.append(r)
        writer.add_scalar("charts/episodic_return", r, env_steps)
        writer.add_scalar("charts/episodic_length", length, env_steps)
    successes += envs.finished_successes(infos)
    progress = console.current["run"]()  # every rollout calls this after each vector step: the run's progress moves on
    if progress is not None:
        progress.tick(env_steps)


# ------------------------------------------------------------------------------------------------
# 6. The run around a script's loop, in the order main calls them: start, (the script's load_start)
#    open_run_dir, evaluate_only or resume_or_evaluate, start_envs; each iteration ends with
#    log_stats, checkpoint_state and save_run. Plain functions: the loop itself stays in main.
# ------------------------------------------------------------------------------------------------
def start(args, algo: str, detail: str = "") -> tuple[int, int, object]:
    """The first steps of every run: resolve --env-id, print the [start] line at once (the plan: iterations of
    --num-envs x --n-steps x --act-steps env steps and `detail`, or evaluation only), choose and print the env
    workers and threads (plan_parallel) and seed (seed_everything). Returns (steps_per_iter, num_iters, device)."""
    import torch

    envs.resolve_env_id(args.env_id)
    steps_per_iter = args.num_envs * args.n_steps * args.act_steps
    num_iters = max(1, args.total_timesteps // steps_per_iter)
    plan = "evaluation only" if args.eval_only else f"{num_iters} iterations of {steps_per_iter} env steps{detail}"
    print(f"[start] {algo} on {args.env_id}: {plan}", flush=True)
    _run["given_threads"] = torch.get_num_threads()
    _run["plan"] = workers.plan_parallel(args, _run["given_threads"], workers.machine(), avoid.is_avoid(args.env_id))
    workers.print_plan(_run["plan"])
    return steps_per_iter, num_iters, seed_everything(args)


def open_run_dir(args, algo: str, resume: dict | None, path: str | None, load_data: bool = False):
    """The run dir: checked (prepare_run_dir; `resume`, read from `path`, is resumed in place), then with `load_data`
    --dataset is loaded (a run that pre-trains first; a bad dataset still writes nothing), then the dir is created
    with its TensorBoard writer (open_run; a resume appends to its curves). Returns (run_dir, writer, evals, data):
    the run's Evaluations, and the dataset or None."""
    run_dir = prepare_run_dir(args, algo, resume and path, pretrains=load_data)
    data = envs.load_dataset(args.dataset, args.env_id) if load_data else None
    writer = open_run(run_dir, args, resume and resume["env_steps"])
    return run_dir, writer, Evaluations(writer, envs.is_robomimic(args.env_id)), data


def evaluate_only(run_dir: str, algo: str, args, env_steps: int, evals, device, act, normalization):
    """--eval-only (and --pretrain-only's closing evaluation): evaluate `act` once at `env_steps` (the checkpoint's),
    print the result and end the run (finish_run, with the writer `evals` logs to: summary.json, --capture-video).
    The wall time counts from the opening of the run dir (open_run), so --pretrain-only's includes the pre-training."""
    t_start = _run["clock"] or time.time()
    mean, std, success = evals.run(env_steps, act, args, normalization)
    rate = f", success rate {success:.2f}" if evals.robomimic else ""
    print(f"[eval] return {mean:.1f} +- {std:.1f} over {args.eval_episodes} episodes{rate}")
    wall = time.time() - t_start
    finish_run(run_dir, algo, args, env_steps, wall, evals, device, evals.writer, act, normalization)


def log_stats(writer, env_steps: int, section: str, stats: dict, keys=None):
    """Log the algorithm's numbers of an iteration as `section`/<key> at `env_steps`: every entry of `stats`, or
    those of `keys` that it holds (a loss that no update computed, e.g. during critic warm-up, is left out)."""
    for key in stats if keys is None else keys:
        if key in stats:
            writer.add_scalar(f"{section}/{key}", stats[key], env_steps)


def restore_parts(resume: dict | None, trained: dict):
    """Load every part of `trained` (checkpoint key -> an object with load_state_dict: network, optimizer, LR schedule,
    reward scaler) from checkpoint `resume`; checkpoint_state saves them under the same keys. A fresh run (`resume`
    None) keeps them as they are."""
    if resume is None:
        return
    for key, part in trained.items():
        part.load_state_dict(resume[key])


def resume_or_evaluate(resume: dict | None, trained: dict, evals, act, args, normalization, buffer=None):
    """Where the run starts; returns (start_iter, env_steps). A resume: the trained parts (restore_parts), the
    evaluations so far and the replay `buffer` (restore_buffer) come back from checkpoint `resume`. A fresh run:
    the policy it starts from (`act`) is evaluated first, at 0 env steps (the pre-trained, or with --from-scratch
    the initial, return)."""
    if resume is not None:
        restore_parts(resume, trained)
        evals.load_state_dict(resume)
        if buffer is not None:
            restore_buffer(buffer, resume)
        print(f"[resume] {resume['algo']} run at iteration {resume['iteration']}, {resume['env_steps']} env steps")
        return resume["iteration"], resume["env_steps"]
    which = "initial" if getattr(args, "from_scratch", False) else "pre-trained"
    print(f"[eval] evaluating the {which} policy ({args.eval_episodes} episodes)...", flush=True)
    evals.run(0, act, args, normalization)
    return 0, 0


def start_envs(args, normalization, start_iter: int, resume: dict | None, firsts):
    """The training envs: --num-envs of them, seeded --seed + start_iter x --num-envs (a resumed segment draws
    new seeds) and reset; on a resume they continue exactly where checkpoint `resume` stopped (restore_run).
    `firsts`: the rollout's episode-start flags for a fresh run (None where the script keeps none). The envs step
    in the run's env worker processes; a resume keeps the thread counts its run started with (resume_threads).
    Returns (vec, obs, firsts, recent_returns)."""
    seed = args.seed + start_iter * args.num_envs
    plan = _run.get("plan") or dict(env_workers=1, rollout_parts=1)
    if resume is not None:
        resume_threads(args, resume.get("parallel"))
    parallel = plan["env_workers"], stopped, plan["rollout_parts"]
    vec = envs.make_vec_env(args.env_id, args.num_envs, seed, args.act_steps, args.cond_steps, normalization, *parallel)
    obs, _ = vec.reset(seed=seed)
    if resume is None:
        return vec, obs, firsts, []
    return (vec, *restore_run(resume, vec, obs, firsts))


def checkpoint_state(trained: dict, evals, vec, obs, firsts, recent_returns) -> dict:
    """What a checkpoint holds besides the script's networks: every trained part's state_dict under its key, the
    evaluations, run_state (RNGs, envs mid-episode, the rollout's carry-over) and the env workers and threads
    (`parallel`): what resume_or_evaluate and start_envs read back."""
    parts = {key: part.state_dict() for key, part in trained.items()}
    return parts | evals.state_dict() | run_state(vec, obs, firsts, recent_returns) | dict(parallel=_run.get("plan"))


def save_run(state: dict, run_dir: str, iteration: int, num_iters: int, args, writer, buffer=None):
    """Save finished iteration `iteration` (save_iteration, every --save-freq iterations and at the end); the replay
    `buffer`, when there is one, goes into checkpoint_last.pt only."""
    last_only = None if buffer is None else dict(replay_buffer=buffer_state(buffer))
    save_iteration(state, run_dir, iteration, args.save_freq, num_iters, writer, last_only)


# ------------------------------------------------------------------------------------------------
# 7. Processes and threads: who steps the envs, and torch's threads in each phase of the loop
# ------------------------------------------------------------------------------------------------
def resume_threads(args, saved: dict | None):
    """A resume keeps the thread counts and rollout parts its run chose when a flag leaves them to auto (0), and, when
    its rollouts were sampled in parts, its env workers (the parts follow them): other counts change the numbers (the
    last digits, or the noise each part draws), and a resume continues the run exactly. Without them: the plan's."""
    plan = _run.get("plan")
    if not saved or plan is None:
        return
    keys = [k for k in ("sampling_threads", "update_threads", "rollout_parts") if k in saved and k in plan]
    if saved.get("rollout_parts", 1) > 1:  # the policy sampled the envs in parts: the same parts again
        keys.append("env_workers")
    kept = [k for k in keys if not getattr(args, k, 0) and plan[k] != saved[k]]
    for key in kept:
        plan[key], plan[f"{key}_why"] = saved[key], "as the resumed run chose it"
    if kept:
        workers.print_plan(plan)


def phase(name: str) -> float:
    """Enter a phase of the loop, "rollout" (sampling) or "update": torch runs at that phase's threads (the plan
    runs.start printed); returns the time it starts (time.time()), as the loop times its phases."""
    plan = _run.get("plan")
    if plan is not None:
        workers.set_threads(plan["sampling_threads" if name == "rollout" else "update_threads"])
    return time.time()
