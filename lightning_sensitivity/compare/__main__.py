"""``python -m lightning_sensitivity.compare``."""

from lightning_sensitivity.compare.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
