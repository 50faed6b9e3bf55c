"""The seed's example worker for slotman's `kind = "python"`: every public
method is a function, TestWorker::reverse and TestWorker::wait."""
import time

from slotman import Worker


class TestWorker(Worker):
    def reverse(self, payload, job):
        return payload[::-1]

    def wait(self, payload, job):
        """Takes 10 seconds, telling the client how far it got each second."""
        for second in range(1, 11):
            time.sleep(1)
            job.status(second, 10)
        return "waited 10 seconds"

    def _private(self, payload, job):  # not registered: starts with `_`
        return payload

    def NOTVISIBLE(self, payload, job):  # not registered: capitals only
        pass
