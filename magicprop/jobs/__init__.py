"""The command line's jobs: `propagate`, `warp` and `refine`, and the options they share (options.py)."""
