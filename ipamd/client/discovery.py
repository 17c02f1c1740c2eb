"""Where the daemon's socket is: `--socket`, else $IPAMD_SOCKET, else the daemon's default.

DESIGN.md section 6: clients find the socket the way the daemon chose it. One
addition for users other than root: their default is a per-user daemon's
socket, but on a host running the system service (ipamd.socket) the members
of the `ipamd` group talk to that one. So when the per-user socket does not
exist and the system one does, the system one it is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from ipamd import paths

SOCKET_ENV: Final = "IPAMD_SOCKET"


def discover_socket(explicit: str | Path | None = None) -> Path:
    """`explicit` if given (and not empty), else $IPAMD_SOCKET, else the default.

    The default is `/run/ipamd/ipamd.sock` as root, else
    `$XDG_RUNTIME_DIR/ipamd/ipamd.sock`, else `/tmp/ipamd-UID/ipamd.sock`;
    and `/run/ipamd/ipamd.sock` after all when the per-user socket does not
    exist and that one does.
    """
    if explicit is not None and str(explicit):
        return Path(explicit)
    from_env = os.environ.get(SOCKET_ENV)
    if from_env:
        return Path(from_env)
    own = paths.default_socket_path()
    system = paths.SYSTEM_SOCKET
    if own != system and not own.exists() and system.exists():
        return system
    return own
