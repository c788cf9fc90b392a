"""Task bodies shared by every peer. Plain module-level functions, importable by workers.

Nothing here imports a peer package or tasklift, so any worker process can import it cheaply.
"""

import time


def noop(x):
    """The no-op job of W1 and W3: ``f(x) = x + 1``."""
    return x + 1


def sleep(seconds):
    """The sleep job of W2 and W4; returns its argument so results can be checked."""
    time.sleep(seconds)
    return seconds
