"""benchmark.sh's check of TASKS and PYTHON before the first run: one line for each task id no script accepts, or
one line when this Python cannot import what the scripts import (torch, the cleandppo package). Exit status 3 then
(anything else, e.g. 1 for a traceback, means this Python could not run the check at all).

    python scripts/check_tasks.py "Hopper-v2 Walker2D-v2 avoid-m2"

Started as a file (not `python -c`), so it finds cleandppo the way `python cleandppo/<algo>.py` does.
"""

import contextlib
import io
import os
import sys


def main(tasks: str) -> int:
    try:
        import torch  # noqa: F401

        from cleandppo import envs
    except Exception as e:  # ImportError, or a broken install: which one does not change the fix
        print(
            f"PYTHON={os.environ.get('GRID_PYTHON', sys.executable)} cannot import the scripts' packages "
            f"({e.__class__.__name__}: {e}); set PYTHON to "
            "the Python of this project's environment, e.g. PYTHON=.venv/bin/python (pip install -r requirements.txt)"
        )
        return 3
    bad = 0
    for task in tasks.split():
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its "-v2 -> v4" note
                envs.resolve_env_id(task)
        except SystemExit as e:
            print(f"TASKS: {str(e).removeprefix('error: ').replace('--env-id', 'task')}")
            bad += 1
    return 3 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
