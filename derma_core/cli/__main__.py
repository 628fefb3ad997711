"""``python -m derma_core.cli``: the ``derma`` console script."""

from . import main

main()
