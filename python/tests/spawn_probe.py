"""Run in a multiprocessing child: does importing the package take SIGTERM?"""

import signal


def report(queue):
    import trainingjob  # noqa: F401

    queue.put(bool(getattr(signal.getsignal(signal.SIGTERM), "_trainingjob", False)))
