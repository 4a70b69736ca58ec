"""--track: one line naming requirements-wandb.txt without wandb; with it, an offline W&B run that holds the curves
in ./wandb, outside the run dir (TensorBoard sees one run).

The offline run goes through runs.prepare_run_dir / runs.open_run (what every script calls) in a subprocess, so that
wandb's TensorBoard patching stays out of the test process.
"""

import glob
import os
import subprocess
import sys
import textwrap
import types

import pytest

from cleandppo import runs
from conftest import ROOT


def track_args(run_dir):
    return types.SimpleNamespace(env_id="avoid-m2", seed=0, run_dir=str(run_dir), track=True, overwrite=False)


def test_track_without_wandb_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(SystemExit) as stop:
        runs.prepare_run_dir(track_args(tmp_path / "run"), "dppo")
    assert str(stop.value) == (
        "error: --track needs Weights & Biases: pip install -r requirements-wandb.txt (or run without --track)"
    )
    assert not (tmp_path / "run").exists()


def test_track_offline_syncs_the_curves_and_tensorboard_sees_one_run(tmp_path):
    """W&B copies the event files it syncs into its own folder: inside the run dir it synced its copies again and
    again (nested wandb/ folders that TensorBoard and plot_results.py read as more runs). Its folder is ./wandb."""
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing import io_wrapper

    code = textwrap.dedent("""
        import time, types
        import wandb
        from cleandppo import runs
        args = types.SimpleNamespace(env_id="avoid-m2", seed=0, run_dir="runs/run", track=True, overwrite=False)
        writer = runs.open_run(runs.prepare_run_dir(args, "dppo"), args)
        for i in range(8):  # a run that lasts: W&B's watcher looks at the run dir while it trains
            writer.add_scalar("eval/episodic_return", 10.0 + i, 100 * i)
            writer.flush()
            time.sleep(0.5)
        writer.close()
        wandb.finish()
    """)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1", PYTHONPATH=path)
    env.pop("WANDB_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs_seen = list(
        io_wrapper.GetLogdirSubdirectories(str(tmp_path / "runs"))
    )  # what `tensorboard --logdir runs` lists
    assert runs_seen == [str(tmp_path / "runs" / "run")]
    assert not (tmp_path / "runs" / "run" / "wandb").exists()
    assert f"[track] W&B run run: W&B's files in {tmp_path / 'wandb' / 'offline-run-'}" in proc.stdout
    offline = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(offline) == 1, "the offline W&B run lives in ./wandb"
    with open(offline[0], "rb") as f:
        assert b"eval/episodic_return" in f.read(), "the TensorBoard scalars reached the W&B run"
