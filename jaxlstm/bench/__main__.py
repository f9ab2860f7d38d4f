"""``python -m jaxlstm.bench``: the ``jaxlstm-bench`` command."""

from jaxlstm.bench.cli import main

main()
