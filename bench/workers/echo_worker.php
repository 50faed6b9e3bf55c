<?php
// A plain PHP GearmanWorker (Debian php-gearman, libgearman in C) doing
// bench/seed's trivial job: FUNCTION returns its payload. The baseline of
// slotman's PHP library (bench/workers/seed/Bench.php).
//   php echo_worker.php HOST PORT FUNCTION
[, $host, $port, $function] = $argv;
$worker = new GearmanWorker();
$worker->addServer($host, (int) $port);
$worker->addFunction($function, fn (GearmanJob $job) => $job->workload());
while ($worker->work()) {
}
