#!/usr/bin/perl
# A plain Perl Gearman worker (Gearman::Worker, Debian's
# libgearman-client-perl) that knows one thing of slotman: where its job
# servers are. Run it as a `native` worker:
#
#     [workers.Example]
#     kind = "native"
#     command = ["/usr/bin/perl", "/opt/workers/worker.pl"]
#     functions = ["reverse", "sleep"]
#
# Functions (registered as WORKER::NAME, slotman's default prefix, WORKER
# being $SLOTMAN_WORKER): `reverse` (the payload's bytes, reversed) and
# `sleep` (sleeps for the payload's number of seconds, for a job that takes
# a while). Each job writes one line to stderr, which slotman sends to the
# journal with the job's GEARMAN_FUNCTION and GEARMAN_HANDLE.
use strict;
use warnings;
use Gearman::Worker;
use Time::HiRes ();

# slotman's relay (or, with `proxy = false`, the job servers themselves):
# comma-separated host:port.
my @servers = split /,/, ($ENV{SLOTMAN_JOB_SERVERS} // '127.0.0.1:4730');
my $prefix = defined $ENV{SLOTMAN_WORKER} ? "$ENV{SLOTMAN_WORKER}::" : '';
$| = 1;

my $worker = Gearman::Worker->new(job_servers => \@servers);
$worker->register_function("${prefix}reverse" => sub {
    my $payload = $_[0]->arg;
    print STDERR "reverse: ", length($payload), " bytes\n";
    return scalar reverse $payload;
});
$worker->register_function("${prefix}sleep" => sub {
    my $seconds = $_[0]->arg + 0;
    print STDERR "sleep: $seconds s\n";
    Time::HiRes::sleep($seconds);
    return "slept $seconds";
});
$worker->work while 1;
