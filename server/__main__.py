"""`python -m scoreboard` runs the command line (`python -m server` inside a checkout)."""

from .cli import main

raise SystemExit(main())
