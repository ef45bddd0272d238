"""Where a job's fields become concrete choices (network, window) and the rules that need the data, the machine
or the models folder to judge."""

from .window import (DEFAULT_WINDOW_XY, DEFAULT_WINDOW_Z, divisor_for, network_for, problems, stack_shape, validate,
                     window_for)

__all__ = ["DEFAULT_WINDOW_XY", "DEFAULT_WINDOW_Z", "divisor_for", "network_for", "problems", "stack_shape",
           "validate", "window_for"]
