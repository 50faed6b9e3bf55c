#!/usr/bin/perl
# The smallest stdio handler bench/run uses (500-slot scale test): same
# functions as echo_stdio.py (`echo`, `sleep`), a fraction of its memory.
use strict;
use warnings;
binmode STDIN;
binmode STDOUT;
$| = 1;
print "READY\n";
while (defined(my $header = <STDIN>)) {
    my (undef, $function, undef, undef, $size) = split ' ', $header;
    my $payload = '';
    while (length($payload) < $size) {
        my $got = read(STDIN, $payload, $size - length($payload), length($payload));
        exit 1 unless $got;
    }
    if ($function eq 'sleep') {
        select(undef, undef, undef, $payload);
        $payload = 'slept';
    }
    print 'COMPLETE ', length($payload), "\n", $payload;
}
