<?php
// bench/seed: slotman's PHP library serving Bench::echo (returns the payload).
class Bench extends \Slotman\Worker
{
    public function echo(string $payload, $job) { return $payload; }
}
