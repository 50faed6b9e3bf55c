#!/usr/bin/env python3
"""A slotman `stdio` handler in Python.

Functions: `reverse` (the payload's bytes, reversed), `wait` (sleeps for the
payload's number of seconds, reporting progress), `fail` (declines the job).
A function that raises sends EXCEPTION with the error message.

Framing (see examples/README.md): one ASCII header line per frame, then
exactly SIZE raw bytes where the header has a SIZE. A job comes as
`JOB FUNCTION HANDLE UNIQUE SIZE`, or as `JOBX` with sizes in place of the
fields when they are not plain words (spaces, UTF-8, any byte). stdout is the
channel to slotman: print nothing else there; logs go to stderr.
"""

import sys
import time

IN = sys.stdin.buffer
OUT = sys.stdout.buffer


class Declined(Exception):
    """Raised by a function to answer FAIL."""


def send(header, body=None):
    """Writes one frame; `body` (bytes) follows the header when given."""
    if body is None:
        OUT.write(b"%s\n" % header.encode("ascii"))
    else:
        OUT.write(b"%s %d\n" % (header.encode("ascii"), len(body)))
        OUT.write(body)
    OUT.flush()


def reverse(payload):
    return payload[::-1]


def wait(payload):
    seconds = float(payload.decode("ascii"))
    steps = 10
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        send("STATUS %d %d" % (step, steps))
    return b""


def fail(payload):
    raise Declined()


FUNCTIONS = {"reverse": reverse, "wait": wait, "fail": fail}


def read_job(line):
    """The job whose header is `line`: (function, handle, unique, payload),
    all bytes; unique is None when the job has none."""
    word, *fields = line.rstrip(b"\n").split(b" ")
    if word == b"JOB" and len(fields) == 4:
        function, handle, unique, size = fields
        unique = None if unique == b"-" else unique
    elif word == b"JOBX" and len(fields) == 4:
        # Sizes instead of fields: the fields' bytes come first, then the payload.
        f, h, u, size = fields
        function, handle = IN.read(int(f)), IN.read(int(h))
        unique = None if u == b"-" else IN.read(int(u))
    else:
        sys.exit("unexpected frame %r" % line)
    return function, handle, unique, IN.read(int(size))  # exactly SIZE bytes


def main():
    send("READY")
    for line in iter(IN.readline, b""):  # b"" = end of input: slotman is done
        function, handle, unique, payload = read_job(line)
        function = function.decode()  # from slotman's config: always UTF-8
        print("job %r (%r) %s" % (handle, unique, function), file=sys.stderr)
        try:
            result = FUNCTIONS[function](payload)
        except Declined:
            send("FAIL")
        except Exception as e:  # noqa: BLE001 - any error becomes EXCEPTION
            send("EXCEPTION", repr(e).encode())
        else:
            send("COMPLETE", result)


if __name__ == "__main__":
    main()
