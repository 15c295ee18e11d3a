"""``python -m phototag.cli ...`` runs the command line."""

from __future__ import annotations

import sys

from .main import main

sys.exit(main())
