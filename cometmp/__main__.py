"""``python -m cometmp``: the same command line as ``cometmp`` (cometmp.tools.cli)."""

from .tools.cli import main

raise SystemExit(main())
