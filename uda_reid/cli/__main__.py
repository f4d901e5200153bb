"""``python -m uda_reid.cli``: the form torchrun starts (``torchrun --nproc_per_node=G -m uda_reid.cli adapt ...``)."""

from . import main

main()
