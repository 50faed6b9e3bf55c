#!/usr/bin/env php
<?php
// A plain PHP Gearman worker (php-gearman's GearmanWorker) that knows one
// thing of slotman: where its job servers are. Run it as a `native` worker:
//
//     [workers.Example]
//     kind = "native"
//     command = ["/usr/bin/php", "/opt/workers/worker.php"]
//     functions = ["reverse", "sleep"]
//
// Functions (registered as WORKER::NAME, slotman's default prefix, WORKER
// being $SLOTMAN_WORKER): `reverse` (the payload's bytes, reversed) and
// `sleep` (sleeps for the payload's number of seconds, for a job that
// takes a while). Each job writes one line to stderr, which slotman sends
// to the journal with the job's GEARMAN_FUNCTION and GEARMAN_HANDLE.

// The CLI prints warnings to stdout by default; keep stdout for results.
ini_set('display_errors', 'stderr');

// slotman's relay (or, with `proxy = false`, the job servers themselves):
// comma-separated host:port, exactly what addServers() takes.
$servers = getenv('SLOTMAN_JOB_SERVERS') ?: '127.0.0.1:4730';
$prefix = getenv('SLOTMAN_WORKER') === false ? '' : getenv('SLOTMAN_WORKER') . '::';

$worker = new GearmanWorker();
$worker->addServers($servers);
$worker->addFunction($prefix . 'reverse', function (GearmanJob $job): string {
    $payload = $job->workload();
    fwrite(STDERR, 'reverse: ' . strlen($payload) . " bytes\n");
    return strrev($payload);
});
$worker->addFunction($prefix . 'sleep', function (GearmanJob $job): string {
    $seconds = (float) $job->workload();
    fwrite(STDERR, "sleep: $seconds s\n");
    usleep((int) ($seconds * 1e6));
    return "slept $seconds";
});

while ($worker->work()) {
}
// The connection to the job server (or to slotman's relay) is gone: exit,
// and slotman starts a new worker.
fwrite(STDERR, 'worker stops: ' . $worker->error() . "\n");
exit(1);
