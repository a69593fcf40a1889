"""``python -m orchestrator.cli``: the same as ``chimera-orch``."""

from orchestrator.cli.main import main

raise SystemExit(main())
