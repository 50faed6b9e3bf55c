"""A plain Python worker with the PyPI `gearman3` library (a Python 3 fork
of python-gearman) doing bench/seed's trivial job: FUNCTION returns its
payload. The baseline of slotman's Python library (bench/workers/seed/Bench.py).
   python echo_worker_gearman3.py HOST:PORT FUNCTION
"""
import sys

import gearman

server, function = sys.argv[1], sys.argv[2]
worker = gearman.GearmanWorker([server])
worker.register_task(function, lambda worker, job: job.data)
worker.work()
