"""``python -m lightning_sensitivity.compare``."""

from lightning_sensitivity.compare.cli import main

raise SystemExit(main())
