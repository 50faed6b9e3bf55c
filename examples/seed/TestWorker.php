<?php
// The seed's example worker for slotman's `kind = "php"`: every public
// method is a function, TestWorker::reverse and TestWorker::wait.

class TestWorker extends \Slotman\Worker
{
    public function reverse(string $payload, $job)
    {
        return strrev($payload);
    }

    // Takes 10 seconds, telling the client how far it got each second.
    public function wait(string $payload, $job)
    {
        for ($second = 1; $second <= 10; $second++) {
            sleep(1);
            $job->status($second, 10);
        }
        return "waited 10 seconds";
    }

    public function _private(string $payload, $job) // not registered: starts with `_`
    {
        return $payload;
    }

    public function NOTVISIBLE() // not registered: capitals only
    {
    }
}
