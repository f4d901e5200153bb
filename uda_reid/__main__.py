"""``python -m uda_reid``: the ``udareid`` command line, for an environment whose scripts folder is not on PATH."""

from .cli import main

main()
