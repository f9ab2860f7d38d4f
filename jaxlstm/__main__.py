"""``python -m jaxlstm``: :func:`jaxlstm.show_config`."""

from jaxlstm._show import show_config

show_config()
