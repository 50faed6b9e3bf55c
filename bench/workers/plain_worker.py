#!/usr/bin/python3
"""A plain persistent Gearman worker in Python: the baseline bench/run
compares slotman's stdio slots with. It speaks the protocol itself the way a
slot runner does (SET_CLIENT_ID, CAN_DO, GRAB_JOB_UNIQ / PRE_SLEEP / NOOP,
one request per write) and does the same work as handlers/echo_stdio.py:
`echo` returns the payload, `sleep` sleeps float(payload) seconds, `spin`
burns int(payload) microseconds of CPU.

usage: plain_worker.py HOST:PORT PREFIX FUNCTION... [--jobs N] [--id ID]
  --jobs N   exit after N jobs (0 = never): a hand-rolled `workleft`.
"""
import os, socket, struct, sys, time

CAN_DO, PRE_SLEEP, NOOP, NO_JOB = 1, 4, 6, 10
WORK_COMPLETE, SET_CLIENT_ID = 13, 22
GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ = 30, 31


def pkt(kind, *args):
    body = b"\0".join(args)
    return b"\0REQ" + struct.pack(">II", kind, len(body)) + body


class Conn:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

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
                sys.exit(0)
            self.buf += chunk


def main():
    args = sys.argv[1:]
    jobs_max, client_id = 0, "plain:%d" % os.getpid()
    if "--jobs" in args:
        i = args.index("--jobs")
        jobs_max = int(args[i + 1])
        del args[i:i + 2]
    if "--id" in args:
        i = args.index("--id")
        client_id = args[i + 1]
        del args[i:i + 2]
    addr, prefix, functions = args[0], args[1], args[2:]
    c = Conn(addr)
    c.send(pkt(SET_CLIENT_ID, client_id.encode()) +
           b"".join(pkt(CAN_DO, (prefix + f).encode()) for f in functions))
    done = 0
    while True:
        c.send(pkt(GRAB_JOB_UNIQ))
        kind, body = c.read()
        while kind == NOOP:
            kind, body = c.read()
        if kind == NO_JOB:
            c.send(pkt(PRE_SLEEP))
            while kind != NOOP:
                kind, body = c.read()
            continue
        if kind != JOB_ASSIGN_UNIQ:
            continue
        handle, function, _unique, payload = body.split(b"\0", 3)
        if function.endswith(b"sleep"):
            time.sleep(float(payload))
            payload = b"slept"
        elif function.endswith(b"spin"):
            end = time.perf_counter() + int(payload) / 1e6
            while time.perf_counter() < end:
                pass
        c.send(pkt(WORK_COMPLETE, handle, payload))
        done += 1
        if jobs_max and done >= jobs_max:
            return


if __name__ == "__main__":
    main()
