#!/usr/bin/perl
# A plain Perl Gearman::Worker (Debian libgearman-client-perl) doing
# bench/seed's trivial job: FUNCTION returns its payload. The baseline of
# slotman's Perl library (bench/workers/seed/Bench.pm).
#   echo_worker.pl HOST:PORT FUNCTION
use strict;
use warnings;
use Gearman::Worker;

my ($server, $function) = @ARGV;
my $worker = Gearman::Worker->new(job_servers => [$server]);
$worker->register_function($function => sub { return $_[0]->arg });
$worker->work while 1;
