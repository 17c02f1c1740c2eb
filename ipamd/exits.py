"""Exit statuses of `ipamd`, `ipamd check` and `ipamd-client`: defined once, here.

The names are sysexits.h's, through the stdlib's `os.EX_*`, so that every
program says "73" for the same kind of failure. `ipamd-client` adds its own
range for daemon errors (10 + the error's code, see cli.py), which stays clear
of these. systemd/ipamd.service's RestartPreventExitStatus= and the README's
tables list the same numbers; tests/test_systemd_units.py keeps them in step.
"""

from __future__ import annotations

import os
from typing import Final

OK: Final = os.EX_OK  # 0
# `ipamd`: an unexpected internal error; `ipamd check`: it found problems;
# `ipamd-client`: a daemon error code this client does not know.
FAILURE: Final = 1
USAGE: Final = os.EX_USAGE  # 64: bad command line
DATAERR: Final = os.EX_DATAERR  # 65: corrupt database / unreadable --file
NOINPUT: Final = os.EX_NOINPUT  # 66: no database / --file cannot be read
UNAVAILABLE: Final = os.EX_UNAVAILABLE  # 69: the daemon cannot be reached
CANTCREAT: Final = os.EX_CANTCREAT  # 73: a path ipamd must create, bind or lock is refused
TEMPFAIL: Final = os.EX_TEMPFAIL  # 75: try again later (locked, timed out, writer failed)
PROTOCOL: Final = os.EX_PROTOCOL  # 76: the peer broke the protocol
CONFIG: Final = os.EX_CONFIG  # 78: bad config or environment
INTERRUPTED: Final = 130  # the shell's 128 + SIGINT
