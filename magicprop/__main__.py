"""`python -m magicprop ...`: see magicprop.cli."""

from .cli import main

raise SystemExit(main())
