"""slotman's handler library for Python: a worker is a class that extends
`Worker`, and every public method it defines is a Gearman function.

    from slotman import Worker

    class TestWorker(Worker):
        def reverse(self, payload, job):
            return payload[::-1]

slotman runs it for `kind = "python"` (DESIGN.md, "Seed-style workers"): it
imports the class from `TestWorker.py` in the worker's `libs`, announces its
methods with `READY name...` and then speaks slotman's stdio framing
(examples/README.md) on the pipes it was started with. A method gets the
payload as bytes and a `Job`; it returns bytes or str (None is empty), and
an exception it raises fails the job with WORK_EXCEPTION and its message.
Standard library only.
"""

import importlib
import inspect
import os
import re
import sys
import traceback

__all__ = ["Worker", "Job"]

# Longest header line slotman reads, newline included.
MAX_HEADER = 1024

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


class Worker:
    """Base class of a worker. slotman creates one instance per handler
    process (with no arguments) before the first job."""


class Job:
    """What a method gets with its payload: who the job is, and a way to
    send progress to the client while it runs."""

    __slots__ = ("function", "handle", "unique", "_io")

    def __init__(self, function, handle, unique, io):
        self.function = function  # name without the worker's prefix (str)
        self.handle = handle  # the job server's handle (str)
        self.unique = unique  # the client's unique id (bytes), or None
        self._io = io

    def status(self, numerator, denominator):
        """WORK_STATUS: `job.status(3, 10)` (3 of 10 done)."""
        for n in (numerator, denominator):
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError("status(numerator, denominator) takes whole numbers >= 0")
        self._io.send(b"STATUS %d %d\n" % (numerator, denominator))

    def data(self, data):
        """WORK_DATA: part of the result, sent now (bytes or str)."""
        self._io.send_frame(b"DATA", _bytes(data, "data()"))

    def warning(self, data):
        """WORK_WARNING (bytes or str)."""
        self._io.send_frame(b"WARNING", _bytes(data, "warning()"))


def _bytes(value, what):
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError("%s gave %s; give bytes or str" % (what, type(value).__name__))


def _functions(cls):
    """The class's functions by the seed's rule: plain methods the class
    defines itself (not inherited), not starting with `_`, not in capitals
    only. Sorted, so READY is stable."""
    names = []
    for name, value in vars(cls).items():
        if not inspect.isfunction(value) or name.startswith("_") or name == name.upper():
            continue
        if not _NAME.match(name):
            print("slotman: %s.%s is not registered: a function name must be ASCII "
                  "letters, digits and _" % (cls.__name__, name), file=sys.stderr)
            continue
        names.append(name)
    return sorted(names)


def _load(name):
    """The worker class `name` from the module `name` (on sys.path: the
    worker's `libs`)."""
    try:
        module = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - said on one line, last, for the slot's status
        traceback.print_exc()
        raise SystemExit("slotman: cannot load %s: %s: %s" % (name, type(e).__name__, e))
    cls = getattr(module, name, None)
    if not inspect.isclass(cls):
        raise SystemExit("slotman: %s defines no class %s" % (module.__file__, name))
    if not issubclass(cls, Worker):
        raise SystemExit("slotman: %s does not extend slotman.Worker; write "
                         "`class %s(Worker):` after `from slotman import Worker`" % (name, name))
    return cls


class _IO:
    """The framing's pipes. slotman's stdin and stdout become private files;
    fd 0 is then /dev/null and fd 1 goes to stderr, so that whatever a
    method prints (or reads) cannot break the framing."""

    def __init__(self):
        self.inp = open(os.dup(0), "rb", buffering=65536)
        self.out = open(os.dup(1), "wb", buffering=0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        try:
            sys.stdout.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass

    def send(self, data):
        view = memoryview(data)
        while view:
            n = self.out.write(view)
            view = view[n:]

    def send_frame(self, word, body):
        self.send(b"%s %d\n" % (word, len(body)) + body)

    def _take(self, size):
        data = self.inp.read(size)
        if len(data) != size:
            raise SystemExit("slotman: stdin ended in the middle of a job")
        return data

    def next_job(self):
        """(function, handle, unique, payload), or None once slotman closed
        stdin (the slot is stopping)."""
        line = self.inp.readline(MAX_HEADER)
        if not line:
            return None
        if not line.endswith(b"\n"):
            raise SystemExit("slotman: bad header from slotman: %r" % line[:80])
        fields = line[:-1].split(b" ")
        if len(fields) != 5 or fields[0] not in (b"JOB", b"JOBX") or not fields[4].isdigit():
            raise SystemExit("slotman: unexpected frame from slotman: %r" % line[:80])
        word, function, handle, unique, size = fields
        if word == b"JOBX":
            function = self._take(int(function))
            handle = self._take(int(handle))
            unique = None if unique == b"-" else self._take(int(unique))
        elif unique == b"-":
            unique = None
        payload = self._take(int(size))
        return (function.decode("utf-8", "replace"), handle.decode("utf-8", "replace"),
                unique, payload)


def _main(args):
    """Entry point, run by slotman: `_main([NAME])` serves jobs until stdin
    ends; `_main(["--list", NAME])` prints the functions, one per line
    (`slotman check`)."""
    listing = bool(args) and args[0] == "--list"
    if listing:
        args = args[1:]
    if not args:
        raise SystemExit("slotman: no worker class named")
    # Before the module loads: what it prints at import time goes to stderr.
    io = _IO()
    cls = _load(args[0])
    functions = _functions(cls)
    if listing:
        io.send("".join(name + "\n" for name in functions).encode("ascii"))
        return 0
    if not functions:
        raise SystemExit("slotman: %s has no public methods to register" % cls.__name__)
    ready = " ".join(["READY"] + functions) + "\n"
    if len(ready) > MAX_HEADER:
        raise SystemExit("slotman: %s has too many methods to announce in one line of %d "
                         "bytes; move some to another worker" % (cls.__name__, MAX_HEADER))
    worker = cls()
    methods = {name: getattr(worker, name) for name in functions}
    io.send(ready.encode("ascii"))
    while True:
        job = io.next_job()
        if job is None:
            return 0
        function, handle, unique, payload = job
        try:
            method = methods.get(function)
            if method is None:
                raise LookupError("%s has no function `%s`" % (cls.__name__, function))
            result = method(payload, Job(function, handle, unique, io))
            result = _bytes(result, "%s.%s returned" % (cls.__name__, function))
        except Exception as e:  # noqa: BLE001 - every error of a job fails only that job
            message = str(e) or type(e).__name__
            print("slotman: %s.%s: %s" % (cls.__name__, function, message), file=sys.stderr)
            traceback.print_exc()
            sys.stderr.flush()
            io.send_frame(b"EXCEPTION", message.encode("utf-8", "replace"))
        else:
            io.send_frame(b"COMPLETE", result)
