"""Minimal Gearman client and admin helpers for bench/run (stdlib only).

Only what the benchmarks need: the admin text protocol (`workers`,
`status`), pipelined background submissions for bursts, and sequential
foreground jobs for latency. Throughput load comes from bench/loadgen.
"""
import socket
import struct
import time

SUBMIT_JOB, JOB_CREATED, WORK_COMPLETE, WORK_FAIL = 7, 8, 13, 14
SUBMIT_JOB_BG, ERROR, WORK_EXCEPTION = 18, 19, 25


def pkt(kind, *args):
    body = b"\0".join(args)
    return b"\0REQ" + struct.pack(">II", kind, len(body)) + body


class Conn:
    def __init__(self, port, host="127.0.0.1"):
        self.s = socket.create_connection((host, port), timeout=30)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        self.s.close()

    def read(self):
        while True:
            if len(self.buf) >= 12:
                kind, size = struct.unpack(">II", self.buf[4:12])
                if len(self.buf) >= 12 + size:
                    body = self.buf[12:12 + size]
                    self.buf = self.buf[12 + size:]
                    return kind, body
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("job server closed the connection")
            self.buf += chunk


def submit_bg(port, function, payloads):
    """Submits background jobs in one write; returns once every JOB_CREATED
    is back (the moment the burst has landed)."""
    c = Conn(port)
    data = b"".join(pkt(SUBMIT_JOB_BG, function.encode(), b"", p) for p in payloads)
    c.s.sendall(data)
    for _ in payloads:
        kind, body = c.read()
        if kind != JOB_CREATED:
            raise RuntimeError("submit_bg: got packet %d: %r" % (kind, body))
    t = time.monotonic()
    c.close()
    return t


def sequential(port, function, n, payload=b"x"):
    """Runs n foreground jobs one after another; returns each job's latency
    (submit to WORK_COMPLETE) in seconds."""
    c = Conn(port)
    out = []
    for i in range(n):
        t0 = time.monotonic()
        c.s.sendall(pkt(SUBMIT_JOB, function.encode(), b"", payload))
        while True:
            kind, body = c.read()
            if kind in (WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION):
                break
            if kind == ERROR:
                raise RuntimeError("job server error: %r" % body)
        out.append(time.monotonic() - t0)
    c.close()
    return out


class Admin:
    """One persistent connection for admin text commands."""

    def __init__(self, port, host="127.0.0.1"):
        self.s = socket.create_connection((host, port), timeout=10)
        self.buf = b""

    def close(self):
        self.s.close()

    def cmd(self, text):
        self.s.sendall(text.encode() + b"\n")
        lines = []
        while True:
            while b"\n" not in self.buf:
                chunk = self.s.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("admin connection closed")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.decode(errors="replace")
            if line == ".":
                return lines
            lines.append(line)

    def workers(self):
        """[(client_id, [functions])] as `gearadmin --workers` shows them."""
        out = []
        for line in self.cmd("workers"):
            left, _, right = line.partition(" : ")
            parts = left.split()
            if line.endswith(" :"):
                parts = line[:-2].split()
                right = ""
            cid = parts[2] if len(parts) >= 3 else "-"
            out.append((cid, right.split()))
        return out

    def count(self, client_prefix, function):
        """Connections whose client id starts with client_prefix and that
        have `function` registered."""
        return sum(1 for cid, fs in self.workers()
                   if cid.startswith(client_prefix) and function in fs)

    def status(self):
        """{function: (queued, running, workers)}"""
        out = {}
        for line in self.cmd("status"):
            f = line.split("\t")
            if len(f) >= 4:
                out[f[0]] = (int(f[1]), int(f[2]), int(f[3]))
        return out
