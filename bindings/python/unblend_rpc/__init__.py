"""A typed JSON-RPC 2.0 client for the unblend storage appliance.

The appliance speaks SPDK's RPC dialect over a Unix stream socket: each request is one
JSON object, and responses come back as concatenated JSON values with no framing, so
they are decoded one at a time from a growing buffer with ``json.JSONDecoder.raw_decode``
(as SPDK's own Python client does).

Standard library only.
"""

from __future__ import annotations

import codecs
import itertools
import json
import socket
import time
from types import TracebackType
from typing import Any

__all__ = ["Client", "RpcError", "ProtocolError", "DEFAULT_SOCKET", "DEFAULT_TIMEOUT"]

DEFAULT_SOCKET = "/var/tmp/unblend.sock"
DEFAULT_TIMEOUT = 60.0

_JSON_WHITESPACE = " \t\r\n"
_RECV_SIZE = 64 * 1024


class RpcError(Exception):
    """An error object returned by the appliance in place of a result."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.data = data

    @classmethod
    def from_object(cls, error: Any) -> RpcError:
        """Builds an RpcError from a JSON-RPC ``error`` member."""
        if not isinstance(error, dict) or not isinstance(error.get("code"), int):
            raise ProtocolError(f"malformed error object: {error!r}")
        return cls(error["code"], str(error.get("message", "")), error.get("data"))

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"

    def __repr__(self) -> str:
        return f"RpcError(code={self.code!r}, message={self.message!r}, data={self.data!r})"


class ProtocolError(Exception):
    """The appliance sent something that is not a valid JSON-RPC 2.0 response."""


def _drop_none(params: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (params or {}).items() if v is not None}


class Client:
    """A connection to the appliance's RPC socket.

    Calls are synchronous; every call (or batch) must complete within ``timeout`` seconds,
    else ``TimeoutError`` is raised. A closed connection raises ``ConnectionError``.
    """

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._buffer = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._decoder = json.JSONDecoder()
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(path)
        except BaseException:
            self.close()
            raise

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection. Safe to call more than once."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- generic calls --------------------------------------------------------------------

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Calls ``method`` and returns its ``result``; raises RpcError on an error response.

        Parameters whose value is None are left out; an empty ``params`` is not sent.
        """
        deadline = time.monotonic() + self.timeout
        request = self._request(method, params)
        self._send(request, deadline)
        while True:
            for response in self._responses(self._receive(deadline)):
                if response.get("id") == request["id"]:
                    return self._outcome(response, raise_error=True)
                if response.get("id") is None and "error" in response:
                    raise RpcError.from_object(response["error"])
                # Anything else answers an earlier call that timed out: drop it.

    def batch(self, calls: list[tuple[str, dict[str, Any] | None]]) -> list[Any]:
        """Sends ``calls`` as one JSON-RPC batch.

        Returns one entry per call, in request order: the call's result, or an RpcError
        instance (returned, not raised) for a call that failed.
        """
        if not calls:
            return []
        deadline = time.monotonic() + self.timeout
        requests = [self._request(method, params) for method, params in calls]
        outcomes: dict[int, Any] = {}
        pending = {r["id"] for r in requests}
        self._send(requests, deadline)
        while pending:
            value = self._receive(deadline)
            answered_us = False
            for response in self._responses(value):
                rid = response.get("id")
                if rid in pending:
                    outcomes[rid] = self._outcome(response, raise_error=False)
                    pending.discard(rid)
                    answered_us = True
                elif rid is None and "error" in response:
                    raise RpcError.from_object(response["error"])
            if pending and answered_us and isinstance(value, list):
                raise ProtocolError(f"batch response lacks answers for ids {sorted(pending)}")
        return [outcomes[r["id"]] for r in requests]

    # -- wire -----------------------------------------------------------------------------

    def _request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        params = _drop_none(params)
        if params:
            request["params"] = params
        return request

    def _connected(self) -> socket.socket:
        if self._sock is None:
            raise ValueError("the client is closed")
        return self._sock

    def _send(self, payload: Any, deadline: float) -> None:
        sock = self._connected()
        sock.settimeout(self._remaining(deadline))
        try:
            sock.sendall(json.dumps(payload).encode("utf-8"))
        except TimeoutError:
            raise TimeoutError(f"timed out sending to {self.path}") from None

    def _receive(self, deadline: float) -> Any:
        """Returns the next JSON value from the stream, reading more as needed."""
        sock = self._connected()
        while True:
            text = self._buffer.lstrip(_JSON_WHITESPACE)
            # unblend ends every response with a newline, so a large partial response is not
            # decoded again on every read (which would make big responses quadratic).
            if text and ("\n" in text or len(text) < _RECV_SIZE):
                try:
                    value, end = self._decoder.raw_decode(text)
                except json.JSONDecodeError:
                    pass  # incomplete so far: read more
                else:
                    self._buffer = text[end:]
                    return value
            self._buffer = text
            sock.settimeout(self._remaining(deadline))
            try:
                chunk = sock.recv(_RECV_SIZE)
            except TimeoutError:
                raise TimeoutError(f"no response from {self.path} in time") from None
            if not chunk:
                self.close()
                raise ConnectionError(f"{self.path} closed the connection")
            self._buffer += self._utf8.decode(chunk)

    def _remaining(self, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no response from {self.path} in time")
        return remaining

    @staticmethod
    def _responses(value: Any) -> list[dict[str, Any]]:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, dict):
                raise ProtocolError(f"not a JSON-RPC 2.0 response: {item!r}")
        return items

    @staticmethod
    def _outcome(response: dict[str, Any], raise_error: bool) -> Any:
        if "error" in response:
            error = RpcError.from_object(response["error"])
            if raise_error:
                raise error
            return error
        if "result" not in response:
            raise ProtocolError(f"response has neither result nor error: {response!r}")
        return response["result"]

    # -- framework ------------------------------------------------------------------------

    def rpc_get_methods(
        self, current: bool | None = None, include_aliases: bool | None = None
    ) -> list[str]:
        """Names of the RPC methods the appliance serves.

        ``current``: only methods callable in the current state;
        ``include_aliases``: also list deprecated aliases.
        """
        return self.call("rpc_get_methods", {"current": current, "include_aliases": include_aliases})

    def spdk_get_version(self) -> dict[str, Any]:
        """The appliance's version: ``{"version": str, "fields": {...}}``."""
        return self.call("spdk_get_version")

    def framework_start_init(self) -> bool:
        """Finishes subsystem initialisation (a no-op once initialised)."""
        return self.call("framework_start_init")

    def framework_wait_init(self) -> bool:
        """Returns once subsystem initialisation has completed."""
        return self.call("framework_wait_init")

    def framework_get_reactors(self) -> dict[str, Any]:
        """Reactor information: ``{"tick_rate": int, "reactors": [...]}``."""
        return self.call("framework_get_reactors")

    def framework_get_subsystems(self) -> list[dict[str, Any]]:
        """The subsystems, each ``{"subsystem": name, "depends_on": [...]}``."""
        return self.call("framework_get_subsystems")

    def framework_get_config(self, name: str) -> list[dict[str, Any]]:
        """The RPC calls that recreate subsystem ``name``'s current configuration."""
        return self.call("framework_get_config", {"name": name})

    def thread_get_stats(self) -> dict[str, Any]:
        """Per-thread busy/idle statistics: ``{"tick_rate": int, "threads": [...]}``."""
        return self.call("thread_get_stats")

    def save_config(self) -> dict[str, Any]:
        """The whole configuration in SPDK's JSON config format, built as SPDK's client does."""
        return {
            "subsystems": [
                {
                    "subsystem": s["subsystem"],
                    "config": self.framework_get_config(name=s["subsystem"]),
                }
                for s in self.framework_get_subsystems()
            ]
        }

    # -- logging and process --------------------------------------------------------------

    def log_set_print_level(self, level: str) -> bool:
        """Sets the level printed to stderr (ERROR, WARNING, NOTICE, INFO, DEBUG)."""
        return self.call("log_set_print_level", {"level": level})

    def log_get_print_level(self) -> str:
        """The level printed to stderr."""
        return self.call("log_get_print_level")

    def spdk_kill_instance(self, sig_name: str) -> bool:
        """Sends signal ``sig_name`` (e.g. ``"SIGTERM"``) to the appliance.

        The appliance may exit before it answers; a connection closed after the
        request counts as success.
        """
        try:
            return self.call("spdk_kill_instance", {"sig_name": sig_name})
        except ConnectionError:
            return True

    # -- bdevs ----------------------------------------------------------------------------

    def bdev_get_bdevs(self, name: str | None = None) -> list[dict[str, Any]]:
        """Describes every bdev, or only bdev ``name``."""
        return self.call("bdev_get_bdevs", {"name": name})

    def bdev_get_iostat(self, name: str | None = None) -> dict[str, Any]:
        """I/O statistics: ``{"tick_rate": int, "ticks": int, "bdevs": [...]}``."""
        return self.call("bdev_get_iostat", {"name": name})

    def bdev_malloc_create(
        self,
        num_blocks: int,
        block_size: int,
        name: str | None = None,
        uuid: str | None = None,
    ) -> str:
        """Creates a RAM-backed bdev and returns its name (``MallocN`` if none is given)."""
        return self.call(
            "bdev_malloc_create",
            {"name": name, "num_blocks": num_blocks, "block_size": block_size, "uuid": uuid},
        )

    def bdev_malloc_delete(self, name: str) -> bool:
        """Deletes malloc bdev ``name``."""
        return self.call("bdev_malloc_delete", {"name": name})

    def bdev_null_create(
        self, name: str, num_blocks: int, block_size: int, uuid: str | None = None
    ) -> str:
        """Creates a bdev that discards writes and reads zeroes; returns its name."""
        return self.call(
            "bdev_null_create",
            {"name": name, "num_blocks": num_blocks, "block_size": block_size, "uuid": uuid},
        )

    def bdev_null_delete(self, name: str) -> bool:
        """Deletes null bdev ``name``."""
        return self.call("bdev_null_delete", {"name": name})

    def bdev_uring_create(
        self,
        filename: str,
        name: str,
        block_size: int | None = None,
        uuid: str | None = None,
    ) -> str:
        """Creates an io_uring bdev on a file or block device; returns its name."""
        return self.call(
            "bdev_uring_create",
            {"filename": filename, "name": name, "block_size": block_size, "uuid": uuid},
        )

    def bdev_uring_delete(self, name: str) -> bool:
        """Deletes uring bdev ``name``."""
        return self.call("bdev_uring_delete", {"name": name})

    def bdev_aio_create(self, filename: str, name: str, block_size: int | None = None) -> str:
        """Creates a bdev on a file or block device through SPDK's aio interface; returns its name."""
        return self.call(
            "bdev_aio_create", {"filename": filename, "name": name, "block_size": block_size}
        )

    def bdev_aio_delete(self, name: str) -> bool:
        """Deletes aio bdev ``name``."""
        return self.call("bdev_aio_delete", {"name": name})

    # -- unblend only ---------------------------------------------------------------------

    def unblend_bench_start(
        self, bdev_name: str, queue_depth: int, io_size: int, workload: str, seconds: int
    ) -> bool:
        """Starts a benchmark on ``bdev_name`` in the background.

        ``workload`` is one of randread, randwrite, read, write, rw, randrw, verify.
        Fetch the outcome with :meth:`unblend_bench_results`.
        """
        return self.call(
            "unblend_bench_start",
            {
                "bdev_name": bdev_name,
                "queue_depth": queue_depth,
                "io_size": io_size,
                "workload": workload,
                "seconds": seconds,
            },
        )

    def unblend_bench_results(self) -> dict[str, Any]:
        """The state and results of the latest benchmark."""
        return self.call("unblend_bench_results")
