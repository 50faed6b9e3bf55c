package Slotman::Worker;
# slotman's handler library for Perl: a worker is a package that extends this
# one, and every public method it defines is a Gearman function.
#
#   package TestWorker;
#   use parent 'Slotman::Worker';
#   sub reverse { my ($self, $payload, $job) = @_; return scalar reverse $payload }
#   1;
#
# slotman runs it for `kind = "perl"` (DESIGN.md, "Seed-style workers"): it
# loads the package from the worker's `libs`, announces its methods with
# `READY name...` and then speaks slotman's stdio framing (examples/README.md)
# on the pipes it was started with. Standard library only.
use strict;
use warnings;
use B ();

our $VERSION = '1';

# Longest header line slotman reads, newline included.
use constant MAX_HEADER => 1024;

# The constructor: slotman calls `PACKAGE->new` once per handler process.
# Override it (and call this one) to set things up before the first job.
sub new {
    my ($class, %args) = @_;
    return bless {%args}, $class;
}

# The package's functions by the seed's rule: subs the package defines
# itself (not imported, not inherited), not starting with `_`, not in capitals
# only, and not `new` (the constructor). Sorted, so READY is stable.
sub _functions {
    my ($package) = @_;
    no strict 'refs';
    my $stash = \%{"${package}::"};
    my @names;
    for my $name (sort keys %$stash) {
        next if $name =~ /^_/ || $name eq uc $name || $name eq 'new';
        next unless defined &{"${package}::$name"};
        my $gv = B::svref_2object(\&{"${package}::$name"})->GV;
        next if $gv->isa('B::SPECIAL') || $gv->STASH->NAME ne $package;
        if ($name !~ /^[A-Za-z][A-Za-z0-9_]*$/) {
            warn "slotman: ${package}::$name is not registered: a function name must be ASCII letters, digits and _\n";
            next;
        }
        push @names, $name;
    }
    return @names;
}

# Loads the worker's package from @INC (the worker's `libs`).
sub _load {
    my ($package) = @_;
    die "slotman: `$package` is not a Perl package name\n"
        unless $package =~ /^[A-Za-z_]\w*(?:::\w+)*$/;
    (my $file = "$package.pm") =~ s{::}{/}g;
    if (!eval { require $file; 1 }) {
        # The module's own words on one line, without perl's trailer.
        my @why = grep { length && !/^(?:Compilation failed in require|BEGIN failed--compilation aborted)/ }
            split /\n/, "$@";
        die "slotman: cannot load $package: " . join('; ', @why) . "\n";
    }
    die "slotman: $package does not extend Slotman::Worker; add `use parent 'Slotman::Worker';` to $INC{$file}\n"
        unless $package->isa('Slotman::Worker');
    return $package;
}

# Entry point, run by slotman: `_main(PACKAGE)` serves jobs until stdin
# ends; `_main('--list', PACKAGE)` prints the functions, one per line
# (`slotman check`).
sub _main {
    my @args = @_;
    my $list = @args && $args[0] eq '--list' ? shift @args : undef;
    # Before the package loads: what it prints at load time goes to stderr.
    my $io = Slotman::Worker::IO->take_over;
    my $package = _load($args[0] // die "slotman: no worker package named\n");
    my @functions = _functions($package);
    if ($list) {
        $io->send("$_\n") for @functions;
        return 0;
    }
    die "slotman: $package has no public methods to register\n" unless @functions;
    my $ready = join ' ', 'READY', @functions;
    die "slotman: $package has too many methods to announce in one line of "
        . MAX_HEADER . " bytes; move some to another worker\n"
        if length($ready) + 1 > MAX_HEADER;
    my %known = map { $_ => 1 } @functions;
    my $worker = $package->new;
    $io->send("$ready\n");
    while (my ($function, $payload, $job) = $io->next_job) {
        my ($result, $error);
        if (!$known{$function}) {
            $error = "$package has no function `$function`";
        } else {
            # Scalar context, as a function's answer is one string:
            # `return reverse $payload` reverses the string.
            my $ok = eval { $result = $worker->$function($payload, $job); 1 };
            if (!$ok) {
                $error = defined $@ && "$@" ne '' ? "$@" : 'died';
                $error =~ s/\n+\z//;
            } elsif (ref $result) {
                $error = "${package}::$function returned a " . ref($result)
                    . " reference; return a string (encode it first, e.g. with JSON::PP)";
            }
        }
        if (defined $error) {
            warn "slotman: ${package}::$function: $error\n";
            $io->send_frame('EXCEPTION', Slotman::Worker::Job::_bytes($error));
        } else {
            $result = '' unless defined $result;
            utf8::encode($result) if utf8::is_utf8($result);
            $io->send('COMPLETE ' . length($result) . "\n" . $result);
        }
    }
    return 0;
}

# The job object a method gets: progress goes to the client while it runs.
package Slotman::Worker::Job;

# Character strings go out as UTF-8; byte strings as they are.
sub _bytes {
    my ($s) = @_;
    $s = "$s";
    utf8::encode($s) if utf8::is_utf8($s);
    return $s;
}

# The job is [function, handle, unique, io]: made per job, so kept small.
sub function { $_[0][0] }
sub handle   { $_[0][1] }
sub unique   { $_[0][2] }

# WORK_STATUS: `$job->status(3, 10)` (3 of 10 done).
sub status {
    my ($self, $numerator, $denominator) = @_;
    for ($numerator, $denominator) {
        die "status(numerator, denominator) takes whole numbers >= 0\n"
            unless defined && /^[0-9]+\z/;
    }
    $self->[3]->send("STATUS $numerator $denominator\n");
    return;
}

# WORK_DATA: part of the result, sent now.
sub data {
    my ($self, $data) = @_;
    $self->[3]->send_frame('DATA', _bytes($data // ''));
    return;
}

# WORK_WARNING.
sub warning {
    my ($self, $data) = @_;
    $self->[3]->send_frame('WARNING', _bytes($data // ''));
    return;
}

# The framing's pipes. slotman's stdin and stdout become private handles;
# STDIN is then /dev/null and STDOUT goes to stderr, so that whatever a
# method prints (or reads) cannot break the framing.
package Slotman::Worker::IO;

sub take_over {
    my ($class) = @_;
    open(my $in, '<&', \*STDIN) or die "slotman: cannot take stdin: $!\n";
    open(my $out, '>&', \*STDOUT) or die "slotman: cannot take stdout: $!\n";
    binmode $in;
    binmode $out;
    open(STDIN, '<', '/dev/null') or die "slotman: cannot reopen STDIN: $!\n";
    open(STDOUT, '>&', \*STDERR) or die "slotman: cannot point STDOUT at stderr: $!\n";
    STDOUT->autoflush(1);
    return bless { in => $in, out => $out, buf => '' }, $class;
}

# Reads more of stdin into the buffer; 0 at its end.
sub _fill {
    my ($self, $want) = @_;
    $want = 65536 if !$want || $want < 65536;
    while (1) {
        my $n = sysread($self->{in}, $self->{buf}, $want, length $self->{buf});
        return $n if defined $n;
        next if $!{EINTR};
        die "slotman: reading stdin: $!\n";
    }
}

sub _line {
    my ($self) = @_;
    while (1) {
        my $at = index($self->{buf}, "\n");
        if ($at >= 0) {
            my $line = substr($self->{buf}, 0, $at + 1, '');
            chop $line;
            return $line;
        }
        die "slotman: header longer than " . Slotman::Worker::MAX_HEADER . " bytes\n"
            if length $self->{buf} >= Slotman::Worker::MAX_HEADER;
        if (!$self->_fill) {
            return undef if $self->{buf} eq '';
            die "slotman: stdin ended in the middle of a header\n";
        }
    }
}

sub _take {
    my ($self, $size) = @_;
    while (length $self->{buf} < $size) {
        $self->_fill($size - length $self->{buf})
            or die "slotman: stdin ended in the middle of a job\n";
    }
    return substr($self->{buf}, 0, $size, '');
}

# The next job as (function, payload, job object), or an empty list once
# slotman closed stdin (the slot is stopping).
sub next_job {
    my ($self) = @_;
    my $buf = \$self->{buf};
    my $at = index($$buf, "\n");
    my $line;
    if ($at >= 0) {
        $line = substr($$buf, 0, $at + 1, '');
        chop $line;
    } else {
        $line = $self->_line;
        return unless defined $line;
    }
    my ($word, $function, $handle, $unique, $size, $rest) = split / /, $line, 6;
    die "slotman: unexpected frame from slotman: $line\n"
        if defined $rest || !defined $size || $size =~ /[^0-9]/ || $size eq ''
        || ($word ne 'JOB' && $word ne 'JOBX');
    if ($word eq 'JOBX') {
        for ($function, $handle, $unique eq '-' ? () : $unique) {
            die "slotman: bad JOBX header: $line\n" unless /^[0-9]+\z/;
        }
        ($function, $handle) = ($self->_take($function), $self->_take($handle));
        $unique = $unique eq '-' ? undef : $self->_take($unique);
    } elsif ($unique eq '-') {
        $unique = undef;
    }
    my $payload = length($$buf) >= $size ? substr($$buf, 0, $size, '') : $self->_take($size);
    return ($function, $payload, bless([$function, $handle, $unique, $self], 'Slotman::Worker::Job'));
}

sub send {
    my ($self, $bytes) = @_;
    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite($self->{out}, $bytes, length($bytes) - $off, $off);
        if (!defined $n) {
            next if $!{EINTR};
            die "slotman: writing stdout: $!\n";
        }
        $off += $n;
    }
    return;
}

sub send_frame {
    my ($self, $word, $body) = @_;
    $self->send("$word " . length($body) . "\n" . $body);
    return;
}

1;
