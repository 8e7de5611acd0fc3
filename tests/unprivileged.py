"""Running a test's call as a user without root's override of file modes (CI runs as root)."""

from __future__ import annotations

import os
from collections.abc import Callable


def error_as_unprivileged(fn: Callable[[], object], error_type: type[BaseException]) -> str:
    """The message of the ``error_type`` that ``fn()`` raises ("" if none), run in a forked child that drops root
    (when it is root), so that a folder's mode applies to it as it does to a user. A ``SystemExit``'s message is
    its code; any other exception is reported as unexpected."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        message = ""
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            fn()
        except error_type as e:
            message = str(e.code) if isinstance(e, SystemExit) else str(e)
        except BaseException as e:
            message = f"unexpected {type(e).__name__}: {e}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message
