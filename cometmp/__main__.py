"""``python -m cometmp``: the same command line as ``cometmp`` (cometmp.cli)."""

from .cli import main

raise SystemExit(main())
