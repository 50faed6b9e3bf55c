#!/usr/bin/python3
# Handler for bench/soak. Payload: "ID SECONDS". Each job appends
#   start ID PID PPID WALLTIME
#   done ID PID PPID WALLTIME
# to RECORD (argv[1]) with one write(2) on an O_APPEND descriptor (atomic
# across processes), sleeping SECONDS in between. PPID is the slot runner.
#   soak_record.py RECORD          stdio handler (framing: DESIGN.md "stdio")
#   soak_record.py RECORD --exec   exec handler: one job, payload on stdin
import os
import sys
import time

fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
ids = b"%d %d" % (os.getpid(), os.getppid())


def note(word, job):
    os.write(fd, b"%s %s %s %.6f\n" % (word, job, ids, time.time()))


def run(payload):
    job, secs = payload.split()
    note(b"start", job)
    time.sleep(float(secs))
    note(b"done", job)
    return job


if sys.argv[2:] == ["--exec"]:
    sys.stdout.buffer.write(run(sys.stdin.buffer.read()))
    sys.exit(0)

inp, out = sys.stdin.buffer, sys.stdout.buffer
out.write(b"READY\n")
out.flush()
while True:
    header = inp.readline()
    if not header:
        sys.exit(0)
    word, function, handle, unique, size = header.split()
    if word == b"JOBX":  # sizes instead of fields: their bytes lead the payload
        inp.read(int(function) + int(handle) + (0 if unique == b"-" else int(unique)))
    result = run(inp.read(int(size)))
    out.write(b"COMPLETE %d\n%s" % (len(result), result))
    out.flush()
