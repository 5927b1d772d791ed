"""An API process that tells its supervisor when it starts serving.

`vidfarm up` must tell a failed start (a bad setting: stop and say why) from a crash of an API that
was already serving (restart it; clients may be using the port). Only the API knows which it is, so
it writes one byte to a pipe from `up` before it can answer anyone: nobody can see it serving before
`up` knows.
"""

from __future__ import annotations

import contextlib
import os
import socket

import uvicorn


class AnnouncingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready_fd: int) -> None:
        super().__init__(config)
        self.ready_fd = ready_fd

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the app has started and the socket is being served
        if not self.started:
            return
        # Nothing awaited since the server started listening: no request has been answered yet.
        with contextlib.suppress(OSError):  # `up` is gone: so will we be (lifeline), nobody to tell
            os.write(self.ready_fd, b"1")
        os.close(self.ready_fd)
