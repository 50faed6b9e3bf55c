#!/usr/bin/perl
# A slotman `stdio` handler in Perl.
#
# Functions: `reverse` (the payload's bytes, reversed) and `wait` (sleeps for
# the payload's number of seconds, reporting progress). Anything else: FAIL.
#
# Framing (see examples/README.md): one ASCII header line per frame, then
# exactly SIZE raw bytes where the header has a SIZE. A job comes as
# `JOB FUNCTION HANDLE UNIQUE SIZE`, or as `JOBX` with sizes in place of the
# fields when they are not plain words (spaces, UTF-8, any byte). stdout is
# the channel to slotman: print nothing else there; logs go to stderr.
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

# Exactly $n bytes of input.
sub read_exactly {
    my ($n) = @_;
    my $buf = '';
    while (length($buf) < $n) {
        read(STDIN, $buf, $n - length($buf), length($buf))
            or die "end of input inside a job\n";
    }
    return $buf;
}

send_frame('READY');
while (my $line = <STDIN>) {    # undef = end of input: slotman is done
    chomp $line;
    my ($word, @fields) = split / /, $line;
    die "unexpected frame: $line\n" unless @fields == 4 && ($word eq 'JOB' || $word eq 'JOBX');
    my ($function, $handle, $unique, $size) = @fields;
    if ($word eq 'JOBX') {
        # Sizes instead of fields: the fields' bytes come first, then the payload.
        $function = read_exactly($fields[0]);
        $handle   = read_exactly($fields[1]);
        $unique   = read_exactly($fields[2]) unless $fields[2] eq '-';
    }
    $unique = undef if $word eq 'JOB' && $unique eq '-';    # no unique id
    my $payload = read_exactly($size);
    print STDERR "job $handle (", $unique // '-', ") $function\n";
    my $code = $functions{$function};
    if ($code) {
        send_frame('COMPLETE', $code->($payload));
    } else {
        send_frame('FAIL');
    }
}
