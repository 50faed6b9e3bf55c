"""A plain Python worker with the PyPI `gearman3` library (a Python 3 fork
of python-gearman) doing bench/seed's trivial job: FUNCTION returns its
payload. The baseline of slotman's Python library (bench/workers/seed/Bench.py).
   python echo_worker_gearman3.py HOST:PORT FUNCTION
"""
import array
import sys
import types

import gearman
import gearman.connection


class _Array(array.array):
    """gearman3 0.2.1 reads with array.fromstring, gone since Python 3.9;
    the same call under its new name (kept by the slices it takes of its
    buffer), so the library runs unchanged."""

    def fromstring(self, data):
        self.frombytes(data)

    def __getitem__(self, index):
        item = super().__getitem__(index)
        return _Array(self.typecode, item) if isinstance(index, slice) else item


gearman.connection.array = types.SimpleNamespace(array=_Array)

server, function = sys.argv[1], sys.argv[2]
worker = gearman.GearmanWorker([server])
# Registered as bytes: gearman3 compares the name with the bytes of the
# JOB_ASSIGN it receives.
worker.register_task(function.encode(), lambda worker, job: job.data)
worker.work()
