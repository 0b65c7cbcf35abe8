"""``python -m ignite_mlp`` runs the same CLI as ``ignite-mlp``."""

import sys

from ignite_mlp.cli import main

sys.exit(main())
