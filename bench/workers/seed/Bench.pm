package Bench;
# bench/seed: slotman's Perl library serving Bench::echo (returns the payload).
use parent 'Slotman::Worker';
sub echo { return $_[1] }
1;
