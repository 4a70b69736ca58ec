"""--track: one line naming requirements-wandb.txt without wandb; with it, an offline W&B run that holds the curves.

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


def test_track_offline_syncs_the_tensorboard_curves(tmp_path):
    pytest.importorskip("wandb")
    code = textwrap.dedent(f"""
        import types
        import wandb
        from cleandppo import runs
        args = types.SimpleNamespace(env_id="avoid-m2", seed=0, run_dir={str(tmp_path / "run")!r}, track=True,
                                     overwrite=False)
        writer = runs.open_run(runs.prepare_run_dir(args, "dppo"), args)
        for i in range(3):
            writer.add_scalar("eval/episodic_return", 10.0 + i, 100 * i)
        writer.close()
        wandb.finish()
    """)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    offline = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(offline) == 1, "the offline W&B run lives in <run dir>/wandb"
    with open(offline[0], "rb") as f:
        assert b"eval/episodic_return" in f.read(), "the TensorBoard scalars reached the W&B run"
