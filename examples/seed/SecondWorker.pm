package SecondWorker;
# A second worker type in the same service (see slotman.toml): SecondWorker::upper.
use strict;
use warnings;
use parent 'Slotman::Worker';

sub upper {
    my ($self, $payload, $job) = @_;
    return uc $payload;
}

1;
