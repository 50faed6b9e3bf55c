#!/usr/bin/env python3
# A stdio handler for the systemd tests (tests/systemd.rs): functions that
# show where a handler runs and where its output goes.
#   say PAYLOAD  writes "say: PAYLOAD" to stderr, answers with its scope unit
#   where        answers with the unit of its cgroup (e.g. slotman-x-log-1.scope)
#   cgroup       answers with /proc/self/cgroup
#   env NAME     answers with the value of $NAME, or "<unset>"
#   sleep SECS   sleeps, answers "slept"
#   hold MB      keeps MB resident for 3 s, answers "held"
#   echo         answers with the payload
# Framing: see DESIGN.md ("stdio handler framing").
import os, sys, time

inp, out = sys.stdin.buffer, sys.stdout.buffer


def send(b):
    out.write(b)
    out.flush()


def complete(b):
    send(b"COMPLETE %d\n" % len(b) + b)


def unit():
    with open("/proc/self/cgroup") as f:
        lines = f.read().splitlines()
    # the unified hierarchy first, then systemd's named one (hybrid hosts)
    for prefix in ("0::", None):
        for line in lines:
            if prefix and not line.startswith(prefix):
                continue
            if not prefix and ":name=systemd:" not in line:
                continue
            for part in reversed(line.split(":", 2)[2].split("/")):
                if part.endswith(".scope") or part.endswith(".service"):
                    return part
    return "<none>"


send(b"READY\n")
while True:
    header = inp.readline()
    if not header:
        sys.exit(0)
    word, function, handle, unique, size = header.decode("ascii").split()
    if word == "JOBX":  # sizes instead of fields: their bytes lead the payload
        function = inp.read(int(function)).decode()
        handle = inp.read(int(handle)).decode()
        unique = None if unique == "-" else inp.read(int(unique))
    payload = inp.read(int(size))
    if function == "say":
        sys.stderr.write("say: %s\n" % payload.decode(errors="replace"))
        sys.stderr.flush()
        complete(unit().encode())
    elif function == "where":
        complete(unit().encode())
    elif function == "cgroup":
        with open("/proc/self/cgroup", "rb") as f:
            complete(f.read())
    elif function == "env":
        complete(os.environ.get(payload.decode(), "<unset>").encode())
    elif function == "sleep":
        time.sleep(float(payload))
        complete(b"slept")
    elif function == "hold":
        block = bytearray(int(payload) * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(3)
        complete(b"held")
    elif function == "echo":
        complete(payload)
    else:
        send(b"FAIL\n")
