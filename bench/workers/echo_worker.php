<?php
// bench/relay.py's worker: a plain GearmanWorker (php-gearman), the same
// program run directly against gearmand and behind slotman's relay.
//
//     php echo_worker.php [SERVERS PREFIX]
//
// Without arguments: the servers from SLOTMAN_JOB_SERVERS and the prefix
// "$SLOTMAN_WORKER::", as a `native` slot gives them. Functions: `echo`
// (returns the payload) and `ms1` (1 ms of sleep, then the payload).
ini_set('display_errors', 'stderr');
$servers = $argv[1] ?? getenv('SLOTMAN_JOB_SERVERS');
$prefix = $argv[2] ?? getenv('SLOTMAN_WORKER') . '::';
$worker = new GearmanWorker();
$worker->addServers($servers);
$worker->addFunction($prefix . 'echo', fn(GearmanJob $job) => $job->workload());
$worker->addFunction($prefix . 'ms1', function (GearmanJob $job) {
    usleep(1000);
    return $job->workload();
});
while ($worker->work()) {
}
exit(1);
