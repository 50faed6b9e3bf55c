#!/usr/bin/python3
# slotman stdio handler used by bench/run: `echo` returns its payload,
# `sleep` sleeps float(payload) seconds, `spin` burns int(payload)
# microseconds of CPU. Framing: DESIGN.md ("stdio").
import sys, time

inp, out = sys.stdin.buffer, sys.stdout.buffer
out.write(b"READY\n")
out.flush()
while True:
    header = inp.readline()
    if not header:
        break
    _, function, _handle, _unique, size = header.split()
    payload = inp.read(int(size))
    if function == b"sleep":
        time.sleep(float(payload))
        payload = b"slept"
    elif function == b"spin":
        end = time.perf_counter() + int(payload) / 1e6
        while time.perf_counter() < end:
            pass
    out.write(b"COMPLETE %d\n%s" % (len(payload), payload))
    out.flush()
