"""`python -m magicprop ...`: see magicprop.cli."""

import os

# Before torch loads GNU OpenMP: its threads spin this many times (default 300000) waiting for work before they sleep.
# Spinning threads of two busy processes (shots run side by side, a host beside the CLI) starve each other: two runs
# at once took 67 s each where one takes 9 s on 2 cores; 10000 keeps the idle time (docs/decisions.md, "Thread
# counts"). A value the user set is kept; a host (ComfyUI) is never changed: this is the CLI's own process.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import signal  # noqa: E402

from .cli import main  # noqa: E402
from .errors import Terminated  # noqa: E402


def _terminated(signum, _frame):
    raise Terminated(signal.Signals(signum).name, 128 + signum)


# stop as Ctrl-C does: outputs closed and logged (the CLI's own process only); a signal the process was started
# ignoring stays ignored (`nohup` ignores SIGHUP so that a run outlives its terminal)
for _name in ("SIGTERM", "SIGHUP"):
    if hasattr(signal, _name) and signal.getsignal(getattr(signal, _name)) is signal.SIG_DFL:
        signal.signal(getattr(signal, _name), _terminated)

raise SystemExit(main())
