"""bench/seed: slotman's Python library serving Bench::echo (returns the payload)."""
from slotman import Worker


class Bench(Worker):
    def echo(self, payload, job):
        return payload
