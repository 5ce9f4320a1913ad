"""Run by each notebook kernel the docs build starts (``PYTHONSTARTUP``, see conf.py).

Past ``GUIDE_TIMEOUT`` seconds a ``TimeoutError`` is raised in the cell that is
running, so the build's error shows the page, the cell and the line it was stuck
on (nbclient's own timeout, a backstop, can only show the cell's first lines).
"""

import os
import signal


def _arm() -> None:
    limit = int(os.environ.get("GUIDE_TIMEOUT") or 900)

    def out_of_time(signum, frame):  # noqa: ARG001
        signal.setitimer(signal.ITIMER_REAL, 10)  # again, if the cell catches it
        msg = (
            f"this page ran past its {limit} s limit and was stopped here "
            "(raise the limit with GUIDE_TIMEOUT=<seconds>)"
        )
        raise TimeoutError(msg)

    signal.signal(signal.SIGALRM, out_of_time)
    signal.setitimer(signal.ITIMER_REAL, limit)


_arm()
del _arm
