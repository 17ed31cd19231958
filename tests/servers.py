"""Real loopback servers that misbehave on purpose, for the fault tests.

`ResettingProxy` forwards TCP connections to a target server, except the first `resets`
connections, which it answers with a TCP reset once the request has started to arrive.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType


class ResettingProxy:
    """A TCP proxy on 127.0.0.1 that resets the first `resets` connections."""

    def __init__(self, target_host: str, target_port: int, *, resets: int = 1) -> None:
        self._target = (target_host, target_port)
        self._resets_left = resets
        self.resets_done = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> ResettingProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                reset = self._resets_left > 0
                self._resets_left -= 1 if reset else 0
            if reset:
                threading.Thread(target=self._reset, args=(client,), daemon=True).start()
            else:
                threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _reset(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            client.settimeout(5)
            client.recv(1024)  # let the request start, so the reset hits mid-request
            # SO_LINGER with a zero timeout turns close() into a RST instead of a FIN.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        with self._lock:
            self.resets_done += 1

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=10)
        except OSError:
            client.close()
            return
        with client, upstream:
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join(10)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
