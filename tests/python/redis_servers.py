"""Real redis-server processes for the tier tests, on loopback ports in temporary directories:
a single server (killable, restartable, pausable) and a 3-node Redis Cluster."""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest


def _bindable(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port():
    """A free port p <= 55535 whose cluster bus port p + 10000 is free too."""
    for _ in range(1000):
        port = free_port()
        if port <= 55535 and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def require_redis_server():
    if shutil.which("redis-server") is None:  # tests/run_all.sh installs it
        pytest.fail("redis-server is not installed (apt-get install redis-server)")


class RedisServer:
    def __init__(self, directory, port=None, *extra):
        require_redis_server()
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or free_port()
        self.extra = list(extra)
        self.proc = None

    def start(self):
        with open(os.path.join(self.dir, "server.log"), "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                 self.dir, "--save", "", "--appendonly", "no", *self.extra],
                stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready()
        return self

    def wait_ready(self, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    reply = s.recv(64)
                    if reply.startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: see {self.dir}/server.log")
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer")

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"


class RedisCluster:
    """Three masters, no replicas, made with redis-cli --cluster create."""

    def __init__(self, directory):
        self.nodes = [
            RedisServer(os.path.join(str(directory), f"node{i}"), free_cluster_port(),
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000")
            for i in range(3)]

    def start(self):
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self):
        for node in self.nodes:
            node.start()
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{n.port}" for n in self.nodes],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        deadline = time.time() + 30
        while time.time() < deadline:
            states = [subprocess.run(["redis-cli", "-p", str(n.port), "cluster", "info"],
                                     capture_output=True, text=True).stdout for n in self.nodes]
            if all("cluster_state:ok" in s for s in states):
                return
            time.sleep(0.1)
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    def stop(self):
        for node in self.nodes:
            node.stop()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.nodes[0].port}"
