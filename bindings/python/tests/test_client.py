"""Tests of unblend_rpc.Client against a live appliance that the tests start themselves.

The binary is $UNBLEND_BIN, else the repository's target/release/unblend, else
target/debug/unblend.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from unblend_rpc import Client, RpcError

REPO_ROOT = Path(__file__).resolve().parents[3]  # bindings/python/tests -> repo root
START_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0


def find_binary() -> Path:
    from_env = os.environ.get("UNBLEND_BIN")
    if from_env:
        return Path(from_env)
    for profile in ("release", "debug"):
        candidate = REPO_ROOT / "target" / profile / "unblend"
        if candidate.is_file():
            return candidate
    pytest.fail(f"no unblend binary: set UNBLEND_BIN or build one under {REPO_ROOT / 'target'}")


def accepts_connections(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Runs `unblend serve` on a private socket; yields the socket's path."""
    workdir = tmp_path_factory.mktemp("unblend")
    sock_path = workdir / "unblend.sock"
    log_path = workdir / "unblend.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(find_binary()), "serve", "-r", str(sock_path), "-m", "0x1", "-d", str(workdir / "data")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts_connections(sock_path):
            if proc.poll() is not None:
                pytest.fail(f"unblend exited with {proc.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{sock_path} took over {START_TIMEOUT} s to accept:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield str(sock_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"unblend ignored SIGTERM for {STOP_TIMEOUT} s:\n{log_path.read_text()}")
    assert code == 0, f"unblend exited with {code} after SIGTERM:\n{log_path.read_text()}"


@pytest.fixture
def client(appliance: str) -> Iterator[Client]:
    with Client(appliance, timeout=30.0) as c:
        yield c


def bdev_names(client: Client) -> list[str]:
    return [b["name"] for b in client.bdev_get_bdevs()]


def test_version_and_methods(client: Client) -> None:
    version = client.spdk_get_version()
    assert isinstance(version["version"], str) and version["version"]
    methods = client.rpc_get_methods()
    assert isinstance(methods, list)
    assert "bdev_malloc_create" in methods
    assert "spdk_get_version" in methods


def test_malloc_create_list_delete(client: Client) -> None:
    assert client.bdev_malloc_create(num_blocks=2048, block_size=512, name="PyMalloc") == "PyMalloc"
    try:
        [bdev] = client.bdev_get_bdevs(name="PyMalloc")
        assert bdev["name"] == "PyMalloc"
        assert bdev["block_size"] == 512
        assert bdev["num_blocks"] == 2048
        assert "PyMalloc" in bdev_names(client)
    finally:
        assert client.bdev_malloc_delete("PyMalloc") is True
    assert "PyMalloc" not in bdev_names(client)


def test_null_create_list_delete(client: Client) -> None:
    assert client.bdev_null_create("PyNull", num_blocks=65536, block_size=4096) == "PyNull"
    try:
        [bdev] = client.bdev_get_bdevs(name="PyNull")
        assert bdev["name"] == "PyNull"
        assert bdev["block_size"] == 4096
        assert bdev["num_blocks"] == 65536
        assert "PyNull" in bdev_names(client)
    finally:
        assert client.bdev_null_delete("PyNull") is True
    assert "PyNull" not in bdev_names(client)


def test_duplicate_name_is_an_error(client: Client) -> None:
    client.bdev_malloc_create(num_blocks=256, block_size=4096, name="PyDup")
    try:
        with pytest.raises(RpcError) as caught:
            client.bdev_malloc_create(num_blocks=256, block_size=4096, name="PyDup")
        assert isinstance(caught.value.code, int)
        assert caught.value.code < 0
        assert isinstance(caught.value.message, str)
    finally:
        client.bdev_malloc_delete("PyDup")
    assert "PyDup" not in bdev_names(client)


def test_unknown_method(client: Client) -> None:
    with pytest.raises(RpcError) as caught:
        client.call("no_such_method")
    assert caught.value.code == -32601
    # The connection stays usable after an error.
    assert client.spdk_get_version()["version"]


def test_wrong_param_type(client: Client) -> None:
    with pytest.raises(RpcError) as caught:
        client.call("bdev_malloc_create", {"name": "PyBad", "num_blocks": "x", "block_size": 4096})
    assert caught.value.code == -32602
    assert "num_blocks" in caught.value.message
    assert "PyBad" not in bdev_names(client)


def test_batch_returns_results_in_order(client: Client) -> None:
    results = client.batch([("spdk_get_version", None), ("rpc_get_methods", {})])
    assert len(results) == 2
    version, methods = results
    assert isinstance(version, dict) and version["version"]
    assert isinstance(methods, list) and "bdev_malloc_create" in methods


def test_batch_returns_errors_in_place(client: Client) -> None:
    results = client.batch(
        [("no_such_method", None), ("bdev_get_bdevs", {"name": "Malloc0"})]
    )
    assert len(results) == 2
    assert isinstance(results[0], RpcError) and results[0].code == -32601
    assert [b["name"] for b in results[1]] == ["Malloc0"]


def test_save_config_includes_new_malloc(client: Client) -> None:
    client.bdev_malloc_create(num_blocks=1024, block_size=4096, name="PySaved")
    try:
        config = client.save_config()
    finally:
        client.bdev_malloc_delete("PySaved")
    [bdev_subsystem] = [s for s in config["subsystems"] if s["subsystem"] == "bdev"]
    calls = [
        c
        for c in bdev_subsystem["config"]
        if c["method"] == "bdev_malloc_create" and c["params"].get("name") == "PySaved"
    ]
    assert len(calls) == 1
    assert calls[0]["params"]["num_blocks"] == 1024
    assert calls[0]["params"]["block_size"] == 4096


def test_framework_get_reactors(client: Client) -> None:
    reactors = client.framework_get_reactors()["reactors"]
    assert isinstance(reactors, list)
    assert len(reactors) == 1  # started with -m 0x1


def test_bdev_get_iostat(client: Client) -> None:
    stats = client.bdev_get_iostat()
    assert isinstance(stats["bdevs"], list)
    assert "Malloc0" in [b["name"] for b in stats["bdevs"]]
    one = client.bdev_get_iostat(name="Malloc0")
    assert [b["name"] for b in one["bdevs"]] == ["Malloc0"]


def test_uring_bdev_on_a_file(client: Client) -> None:
    # Under target/, not /tmp: tmpfs refuses O_DIRECT.
    images = REPO_ROOT / "target" / "pytest-images"
    images.mkdir(parents=True, exist_ok=True)
    image = images / f"uring-{os.getpid()}.img"
    image.write_bytes(bytes(4 << 20))
    try:
        assert client.bdev_uring_create(str(image), "U0", 4096) == "U0"
        try:
            [bdev] = client.bdev_get_bdevs(name="U0")
            assert bdev["block_size"] == 4096
            assert bdev["num_blocks"] == 1024
        finally:
            assert client.bdev_uring_delete("U0") is True
        assert "U0" not in bdev_names(client)
    finally:
        image.unlink(missing_ok=True)
