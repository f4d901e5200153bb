"""The ``udareid`` command line.

Each command is a thin layer: parse options, build a ``RunConfig`` (recipe, then flags), call
the library. Errors caused by user input (``UdaReidError``) are printed as one clear line, not
as a traceback. One module per group of commands: ``group`` (the ``udareid`` group and its error
handling), ``options`` (options several commands share, config resolution), ``registered``
(options listing what the registries hold, plug-ins included), ``training`` (train, adapt, usl,
pretrain), ``inference`` (evaluate, extract, search, export), ``tools`` (synth, data,
plot-distances, inspect-agreement), ``bench`` and ``recipes``.

``train``, ``adapt`` and ``usl`` also run under torchrun (``torchrun --nproc_per_node=G -m
uda_reid.cli adapt ...``, see ``__main__``): each process joins the process group once, runs the
command, and only rank 0 prints and writes.
"""

from .group import cli, main, os_error_message, user_message
from . import bench, inference, recipes, tools, training  # noqa: E402,F401 (each registers its commands on cli)

__all__ = ["cli", "main", "os_error_message", "user_message"]
