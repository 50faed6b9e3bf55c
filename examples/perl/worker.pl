#!/usr/bin/perl
# A slotman `stdio` handler in Perl.
#
# Functions: `reverse` (the payload's bytes, reversed) and `wait` (sleeps for
# the payload's number of seconds, reporting progress). Anything else: FAIL.
#
# Framing (see examples/README.md): one ASCII header line per frame, then
# exactly SIZE raw bytes where the header has a SIZE. stdout is the channel to
# slotman: print nothing else there; logs go to stderr.
use strict;
use warnings;
use Time::HiRes qw(sleep);

binmode STDIN;
binmode STDOUT;
$| = 1;    # flush stdout after every print

# Writes one frame; the body, when given, follows a "SIZE" field.
sub send_frame {
    my ($header, $body) = @_;
    if (defined $body) {
        print "$header ", length($body), "\n", $body;
    } else {
        print "$header\n";
    }
}

my %functions = (
    reverse => sub { return scalar reverse $_[0] },
    wait    => sub {
        my $steps = 10;
        for my $step (1 .. $steps) {
            sleep($_[0] / $steps);
            send_frame("STATUS $step $steps");
        }
        return '';
    },
);

send_frame('READY');
while (my $line = <STDIN>) {    # undef = end of input: slotman is done
    chomp $line;
    my ($word, $function, $handle, $unique, $size) = split / /, $line;
    die "unexpected frame: $line\n" unless $word eq 'JOB' && defined $size;
    my $payload = '';
    while (length($payload) < $size) {
        read(STDIN, $payload, $size - length($payload), length($payload))
            or die "end of input inside a payload\n";
    }
    print STDERR "job $handle ($unique) $function\n";
    my $code = $functions{$function};
    if ($code) {
        send_frame('COMPLETE', $code->($payload));
    } else {
        send_frame('FAIL');
    }
}
