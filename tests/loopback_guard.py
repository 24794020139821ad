"""Refuse, and record, every connection or name lookup that would leave 127.0.0.1.

Standard library only, so that the interpreters and servers the tests start (a Phoenix
server in its own venv, fresh interpreters) can import it too, with this folder on their
`sys.path`. `Guard().install()` patches the socket module; `uninstall()` restores it.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any


def is_local(host: Any) -> bool:
    """True for loopback and unspecified addresses, "localhost", and no host at all."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).split("%", 1)[0]
    if host in ("", "localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


class Guard:
    """Patches `socket` so that nothing leaves the machine; `refused` lists what tried.

    With `log_path`, each refusal is also appended to that file (for a process whose
    memory the test cannot read).
    """

    def __init__(self, log_path: str | None = None) -> None:
        self.refused: list[str] = []
        self.log_path = log_path
        self._saved: dict[str, Any] = {}

    def _refuse(self, what: str) -> None:
        self.refused.append(what)
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(what + "\n")
        raise OSError("this test allows no network beyond 127.0.0.1: " + what)

    def install(self) -> Guard:
        connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
        sendto, getaddrinfo = socket.socket.sendto, socket.getaddrinfo
        self._saved = {
            "connect": connect,
            "connect_ex": connect_ex,
            "sendto": sendto,
            "getaddrinfo": getaddrinfo,
        }
        guard = self

        def guarded_connect(self: socket.socket, address: Any) -> Any:
            if isinstance(address, tuple) and not is_local(address[0]):
                guard._refuse(f"connect {address!r}")
            return connect(self, address)

        def guarded_connect_ex(self: socket.socket, address: Any) -> Any:
            if isinstance(address, tuple) and not is_local(address[0]):
                guard._refuse(f"connect {address!r}")
            return connect_ex(self, address)

        def guarded_sendto(self: socket.socket, data: Any, *args: Any) -> Any:
            address = args[-1]
            if isinstance(address, tuple) and not is_local(address[0]):
                guard._refuse(f"sendto {address!r}")
            return sendto(self, data, *args)

        def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not is_local(host):
                guard._refuse(f"resolve {host!r}")
            return getaddrinfo(host, *args, **kwargs)

        socket.socket.connect = guarded_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
        socket.socket.sendto = guarded_sendto  # type: ignore[assignment]
        socket.getaddrinfo = guarded_getaddrinfo
        return self

    def uninstall(self) -> None:
        for name in ("connect", "connect_ex", "sendto"):
            if name in self._saved:
                setattr(socket.socket, name, self._saved[name])
        if "getaddrinfo" in self._saved:
            socket.getaddrinfo = self._saved["getaddrinfo"]
        self._saved = {}
