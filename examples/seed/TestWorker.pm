package TestWorker;
# The seed's example worker (Gearman::SlotManager, 2012), for slotman's
# `kind = "perl"`: every public method is a function, TestWorker::reverse
# and TestWorker::wait. Methods starting with `_` and names in capitals only
# are not registered.
use strict;
use warnings;
use parent 'Slotman::Worker';

sub reverse {
    my ($self, $payload, $job) = @_;
    return reverse $payload;
}

# Takes 10 seconds, telling the client how far it got each second.
sub wait {
    my ($self, $payload, $job) = @_;
    for my $second (1 .. 10) {
        sleep 1;
        $job->status($second, 10);
    }
    return "waited 10 seconds";
}

sub _private {    # not registered: starts with `_`
    my ($self, $payload) = @_;
    return $payload;
}

sub NOTVISIBLE {  # not registered: capitals only
}

1;
