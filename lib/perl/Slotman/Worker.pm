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
    if (($ENV{SLOTMAN_CONNECTION} // '') eq 'library') {
        # The library holds the job-server connections itself and only
        # reports to its runner (Slotman::Worker::Direct).
        return Slotman::Worker::Direct->new($io, $package)->serve($worker, \%known, $ready);
    }
    $io->send("$ready\n");
    while (my ($function, $payload, $job) = $io->next_job) {
        my ($result, $error) = _call($package, $worker, \%known, $function, $payload, $job);
        if (defined $error) {
            $io->send_frame('EXCEPTION', $error);
        } else {
            $io->send('COMPLETE ' . length($result) . "\n" . $result);
        }
    }
    return 0;
}

# Runs one job's method: (result bytes) or (undef, exception bytes), the
# exception said on stderr.
sub _call {
    my ($package, $worker, $known, $function, $payload, $job) = @_;
    my ($result, $error);
    if (!$known->{$function}) {
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
        return (undef, Slotman::Worker::Job::_bytes($error));
    }
    $result = '' unless defined $result;
    utf8::encode($result) if utf8::is_utf8($result);
    return ($result);
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

# The library mode (`connection = "library"`, SLOTMAN_CONNECTION=library):
# the library holds the job-server connections itself (the Gearman worker
# protocol over IO::Socket::INET) and tells its runner, on the stdout it
# took over, what the runner would otherwise have seen itself:
#   READY f...            registered (the functions, without prefix)
#   LINK ADDR [why]       a job server reachable, or not and why
#   BUSY FUNCTION HANDLE  a job started
#   DONE COMPLETE|EXCEPTION|TIMEOUT   it ended (TIMEOUT: failed at
#                         `timeout`; the process exits to be replaced)
#   IDLE                  no job anywhere: asleep until a job server wakes it
# and reads STOP (or EOF), PAUSE and RESUME from the runner on stdin: it
# finishes the job in hand first. The runner keeps supervision, limits,
# `timeout` (it kills the process: the job server re-queues the job) and
# counts `workleft`, which the library also obeys itself (SLOTMAN_WORKLEFT).
package Slotman::Worker::Direct;

use Socket qw(IPPROTO_TCP TCP_NODELAY);
use IO::Socket::INET ();
use Time::HiRes ();

use constant {
    CAN_DO => 1, PRE_SLEEP => 4, NOOP => 6, NO_JOB => 10, WORK_STATUS => 12,
    WORK_COMPLETE => 13, WORK_FAIL => 14, ECHO_REQ => 16, ECHO_RES => 17,
    ERROR => 19, SET_CLIENT_ID => 22, WORK_EXCEPTION => 25, WORK_DATA => 28,
    WORK_WARNING => 29, GRAB_JOB_UNIQ => 30, JOB_ASSIGN_UNIQ => 31,
};
# The runner's own figures (src/slot/connection.rs): a job server that does
# not answer within REPLY_TIMEOUT is dropped and reconnected to with
# back-off; a sleeping connection is checked with ECHO every KEEPALIVE.
use constant { REPLY_TIMEOUT => 5, KEEPALIVE => 10, BACKOFF_MIN => 0.1, BACKOFF_MAX => 5 };

sub _packet {
    my $body = join "\0", @_[1 .. $#_];
    return pack('a4NN', "\0REQ", $_[0], length $body) . $body;
}

use constant GRAB => _packet(GRAB_JOB_UNIQ);

sub new {
    my ($class, $io, $package) = @_;
    my @addrs = grep { length } split /\s*,\s*/, ($ENV{SLOTMAN_JOB_SERVERS} // '');
    die "slotman: SLOTMAN_JOB_SERVERS names no job server\n" unless @addrs;
    return bless {
        io => $io,
        ctl => fileno($io->{in}),
        servers => [map { { addr => $_, state => 'down', retry => 0, backoff => BACKOFF_MIN, buf => '' } } @addrs],
        prefix => $ENV{SLOTMAN_PREFIX} // "${package}::",
        client_id => $ENV{SLOTMAN_CLIENT_ID} // "slotman:${package}:$$",
        workleft => $ENV{SLOTMAN_WORKLEFT} || 0,
        max_packet => $ENV{SLOTMAN_MAX_PACKET} || (64 << 20),
        package => $package,
        done => 0, stopping => 0, paused => 0, idle => 1, ctl_buf => '', held => '',
        # SLOTMAN_REPORT=each: every DONE at once (measured in bench/seed.py).
        each => ($ENV{SLOTMAN_REPORT} // '') eq 'each',
    }, $class;
}

sub serve {
    my ($self, $worker, $known, $ready) = @_;
    my @functions = sort keys %$known;
    if (length($ENV{SLOTMAN_FUNCTIONS} // '')) {
        my %want = map { $_ => 1 } split ' ', $ENV{SLOTMAN_FUNCTIONS};
        @functions = grep { $want{$_} } @functions;
        die "slotman: none of SLOTMAN_FUNCTIONS is a method of $self->{package}\n" unless @functions;
    }
    $self->{register} = join '', _packet(SET_CLIENT_ID, $self->{client_id}),
        map { _packet(CAN_DO, $self->{prefix} . $_) } @functions;
    $self->{worker} = $worker;
    $self->{known} = { map { $_ => 1 } @functions };
    # `timeout`, enforced here so that the job fails (only this connection
    # can answer it); the runner kills the process if this does not work
    # (a method stuck where Perl cannot take the signal).
    $self->{timeout} = ($ENV{SLOTMAN_TIMEOUT_MS} || 0) / 1000;
    $SIG{ALRM} = sub { $self->{late} = 1; die "timed out\n" if $self->{calling} } if $self->{timeout};
    $self->{io}->send(join(' ', 'READY', @functions) . "\n");
    $self->_connect($_) for @{ $self->{servers} };
    while (!$self->{stopping}) {
        for my $s (@{ $self->{servers} }) {
            $self->_grab($s) if $s->{state} eq 'awake' && !$self->{paused};
            last if $self->{stopping};
        }
        $self->_sleep unless $self->{stopping};
    }
    $self->_report_idle;
    close $_->{sock} for grep { $_->{sock} } @{ $self->{servers} };
    return 0;
}

# IDLE, after the DONE held back (see _job), if the runner has not heard it.
sub _report_idle {
    my ($self) = @_;
    return if $self->{idle}++;
    $self->{io}->send($self->{held} . "IDLE\n");
    $self->{held} = '';
}

# Takes jobs from $s until it has none (then it sleeps) or the worker
# stops taking them; the grab of each next job goes out with the answer.
sub _grab {
    my ($self, $s) = @_;
    return unless $self->_write($s, GRAB);
    while (1) {
        my ($type, $body) = $self->_read($s, REPLY_TIMEOUT) or return;
        if ($type == JOB_ASSIGN_UNIQ) {
            $s->{backoff} = BACKOFF_MIN;
            return unless $self->_job($s, $body);
        } elsif ($type == NO_JOB) {
            $s->{backoff} = BACKOFF_MIN;
            $s->{state} = 'asleep';
            $s->{heard} = Time::HiRes::time();
            $self->_write($s, _packet(PRE_SLEEP));
            return;
        } elsif ($type == ERROR) {
            return $self->_drop($s, 'job server said: ' . join(' ', split /\0/, $body));
        } elsif ($type != NOOP && $type != ECHO_RES) {
            return $self->_drop($s, "unexpected packet type $type");
        }
    }
}

# One job: reported, run, answered; whether the next grab went with it.
sub _job {
    my ($self, $s, $body) = @_;
    my ($handle, $function, $unique, $payload) = split /\0/, $body, 4;
    return $self->_drop($s, 'malformed JOB_ASSIGN_UNIQ') unless defined $payload;
    $function = substr($function, length $self->{prefix})
        if index($function, $self->{prefix}) == 0;
    $self->{idle} = 0;
    $self->{io}->send("$self->{held}BUSY $function $handle\n");
    $self->{held} = '';
    my $job = bless [$function, $handle, length $unique ? $unique : undef, $self, $s],
        'Slotman::Worker::DirectJob';
    @$self{qw(late calling)} = (0, 1);
    Time::HiRes::alarm($self->{timeout}) if $self->{timeout};
    my ($result, $error) = Slotman::Worker::_call($self->{package}, $self->{worker}, $self->{known},
        $function, $payload, $job);
    $self->{calling} = 0;
    Time::HiRes::alarm(0) if $self->{timeout};
    if ($self->{late}) {
        # Past `timeout`: failed, as the runner would have failed it, and
        # this process replaced (the method may have left it in any state).
        warn "slotman: $self->{package}::$function: timed out after $self->{timeout}s: job failed\n";
        $self->_write($s, _packet(WORK_FAIL, $handle));
        $self->{held} = "DONE TIMEOUT\n";
        $self->{stopping} = 1;
        return 0;
    }
    my $answer = defined $error ? _packet(WORK_EXCEPTION, $handle, $error)
        : _packet(WORK_COMPLETE, $handle, $result);
    $self->{stopping} = 1 if $self->{workleft} && ++$self->{done} >= $self->{workleft};
    my $more = !$self->{stopping} && !$self->{paused};
    my $sent = $self->_write($s, $more ? $answer . GRAB : $answer);
    # While jobs stream, a job's DONE goes out with the next BUSY (or IDLE):
    # one write and one wake-up of the runner per job, not two.
    $self->{held} = defined $error ? "DONE EXCEPTION\n" : "DONE COMPLETE\n";
    $self->_flush if $self->{each};
    return $sent && $more;
}

sub _flush {
    my ($self) = @_;
    $self->{io}->send($self->{held}) if length $self->{held};
    $self->{held} = '';
}

# The next packet from $s, waiting at most $timeout (then the connection
# is dropped and the empty list returned). The runner's commands are read
# meanwhile.
sub _read {
    my ($self, $s, $timeout) = @_;
    my $deadline;
    my $buf = \$s->{buf};
    while (1) {
        if (length $$buf >= 12) {
            my @packet = $self->_take($s);
            return @packet if @packet || !$s->{sock};
        }
        my $now = Time::HiRes::time();
        $deadline //= $now + $timeout;
        return $self->_drop($s, "no answer within ${timeout}s") if $now >= $deadline;
        my $fd = fileno $s->{sock};
        my $rin = '';
        vec($rin, $fd, 1) = 1;
        vec($rin, $self->{ctl}, 1) = 1 unless $self->{ctl_eof};
        my $n = select(my $rout = $rin, undef, undef, $deadline - $now);
        if ($n < 0) {
            next if $!{EINTR};
            die "slotman: select: $!\n";
        }
        $self->_control if !$self->{ctl_eof} && vec($rout, $self->{ctl}, 1);
        next unless vec($rout, $fd, 1);
        my $got = sysread($s->{sock}, $$buf, 65536, length $$buf);
        if (!defined $got) {
            next if $!{EINTR} || $!{EAGAIN};
            return $self->_drop($s, "$!");
        }
        return $self->_drop($s, 'connection closed') unless $got;
    }
}

# The packet at the head of $s's buffer, if it is all there; a bad one
# drops the connection. Either way, the empty list if none.
sub _take {
    my ($self, $s) = @_;
    my ($magic, $type, $size) = unpack 'a4NN', $s->{buf};
    return $self->_drop($s, 'not a Gearman response') if $magic ne "\0RES";
    return $self->_drop($s, "packet of $size bytes is over the limit") if $size > $self->{max_packet};
    return if length $s->{buf} < 12 + $size;
    my $body = substr($s->{buf}, 12, $size);
    substr($s->{buf}, 0, 12 + $size, '');
    return ($type, $body);
}

# Writes all of $bytes to $s (non-blocking: a job server that stops
# reading is dropped after REPLY_TIMEOUT); false if $s was dropped.
sub _write {
    my ($self, $s, $bytes) = @_;
    return 0 unless $s->{sock};
    my ($off, $len, $deadline) = (0, length $bytes);
    while ($off < $len) {
        my $n = syswrite($s->{sock}, $bytes, $len - $off, $off);
        if (defined $n) {
            $off += $n;
            next;
        }
        return $self->_drop($s, "$!") unless $!{EAGAIN} || $!{EINTR};
        my $now = Time::HiRes::time();
        $deadline //= $now + REPLY_TIMEOUT;
        return $self->_drop($s, 'job server stopped reading') if $now >= $deadline;
        my $win = '';
        vec($win, fileno $s->{sock}, 1) = 1;
        select(undef, $win, undef, $deadline - $now);
    }
    return 1;
}

sub _connect {
    my ($self, $s) = @_;
    my ($host, $port) = $s->{addr} =~ /^\[?(.*?)\]?(?::(\d+))?$/;
    my $sock = IO::Socket::INET->new(PeerHost => $host, PeerPort => $port || 4730,
        Proto => 'tcp', Timeout => REPLY_TIMEOUT);
    if (!$sock) {
        return $self->_drop($s, "$@" || "$!");
    }
    setsockopt($sock, IPPROTO_TCP, TCP_NODELAY, 1);
    $sock->blocking(0);
    binmode $sock;
    # Asleep from the start: the job server answers PRE_SLEEP with a NOOP
    # when it has a job. So the library never waits on a job server that
    # has not spoken since it connected: one that accepts and then hangs
    # costs nothing but its keepalive.
    @$s{qw(sock buf state echo heard)} = ($sock, '', 'asleep', undef, Time::HiRes::time());
    $self->_link($s, undef);
    return $self->_write($s, $self->{register} . _packet(PRE_SLEEP));
}

# Drops $s (its job, if any, is re-queued by the job server), to be
# reconnected to after a growing back-off; returns the empty list.
sub _drop {
    my ($self, $s, $why) = @_;
    close $s->{sock} if $s->{sock};
    $s->{sock} = undef;
    $s->{state} = 'down';
    $s->{retry} = Time::HiRes::time() + $s->{backoff};
    $s->{backoff} = $s->{backoff} * 2 > BACKOFF_MAX ? BACKOFF_MAX : $s->{backoff} * 2;
    $why =~ s/\s+/ /g;
    $self->_link($s, $why);
    return;
}

# Tells the runner a link's state when it changes.
sub _link {
    my ($self, $s, $why) = @_;
    my $said = $why // '';
    return if defined $s->{said} && $s->{said} eq $said;
    $s->{said} = $said;
    warn "slotman: job server $s->{addr}: $why\n" if defined $why;
    $self->{io}->send(defined $why ? "LINK $s->{addr} $why\n" : "LINK $s->{addr}\n");
}

# No job anywhere: waits until a job server wakes us (NOOP), a link is due
# for a reconnect or a keepalive, or the runner says something.
sub _sleep {
    my ($self) = @_;
    $self->_report_idle;
    while (!$self->{stopping}) {
        my $now = Time::HiRes::time();
        my $wait = KEEPALIVE;
        my $rin = '';
        vec($rin, $self->{ctl}, 1) = 1 unless $self->{ctl_eof};
        for my $s (@{ $self->{servers} }) {
            if ($s->{state} eq 'down') {
                if ($s->{retry} <= $now) {
                    $self->_connect($s);
                    next if $s->{state} eq 'down';
                    $now = Time::HiRes::time();
                } else {
                    $wait = $s->{retry} - $now if $s->{retry} - $now < $wait;
                    next;
                }
            }
            return if $s->{state} eq 'awake' && !$self->{paused};
            next unless $s->{state} eq 'asleep' || $s->{state} eq 'awake';
            if ($s->{state} eq 'asleep') {
                if (!defined $s->{echo} && $now - $s->{heard} >= KEEPALIVE) {
                    $s->{echo} = $now + REPLY_TIMEOUT;
                    next unless $self->_write($s, _packet(ECHO_REQ, 'ping'));
                }
                if (defined $s->{echo}) {
                    if ($s->{echo} <= $now) {
                        $self->_drop($s, 'no answer to a keepalive within ' . REPLY_TIMEOUT . 's');
                        next;
                    }
                    $wait = $s->{echo} - $now if $s->{echo} - $now < $wait;
                } else {
                    my $due = $s->{heard} + KEEPALIVE - $now;
                    $wait = $due if $due < $wait;
                }
            }
            vec($rin, fileno $s->{sock}, 1) = 1;
        }
        $wait = 0 if $wait < 0;
        my $n = select(my $rout = $rin, undef, undef, $wait);
        if ($n < 0) {
            next if $!{EINTR};
            die "slotman: select: $!\n";
        }
        next unless $n;
        $self->_control if !$self->{ctl_eof} && vec($rout, $self->{ctl}, 1);
        for my $s (@{ $self->{servers} }) {
            next unless $s->{sock} && vec($rout, fileno $s->{sock}, 1);
            my $got = sysread($s->{sock}, $s->{buf}, 65536, length $s->{buf});
            if (!defined $got) {
                $self->_drop($s, "$!") unless $!{EINTR} || $!{EAGAIN};
                next;
            }
            if (!$got) {
                $self->_drop($s, 'connection closed');
                next;
            }
            $s->{heard} = Time::HiRes::time();
            while ($s->{sock} && length $s->{buf} >= 12) {
                my ($type, $body) = $self->_take($s) or last;
                if ($type == NOOP) {
                    $s->{state} = 'awake';
                } elsif ($type == ECHO_RES) {
                    $s->{echo} = undef;
                } elsif ($type != NO_JOB) {
                    $self->_drop($s, "unexpected packet type $type");
                    last;
                }
            }
        }
    }
}

# The runner's commands, one a line: STOP (or EOF), PAUSE, RESUME.
sub _control {
    my ($self) = @_;
    my $got = sysread($self->{io}{in}, $self->{ctl_buf}, 4096, length $self->{ctl_buf});
    return if !defined $got && $!{EINTR};
    if (!$got) {
        $self->{ctl_eof} = 1;
        $self->{stopping} = 1;
        return;
    }
    while ($self->{ctl_buf} =~ s/^([^\n]*)\n//) {
        my $word = $1;
        if ($word eq 'STOP') {
            $self->{stopping} = 1;
        } elsif ($word eq 'PAUSE') {
            $self->{paused} = 1;
        } elsif ($word eq 'RESUME') {
            $self->{paused} = 0;
        } else {
            warn "slotman: unknown command from the runner: $word\n";
        }
    }
}

# The job object in the library mode: progress goes straight to the job
# server that assigned the job.
package Slotman::Worker::DirectJob;
our @ISA = ('Slotman::Worker::Job');

sub status {
    my ($self, $numerator, $denominator) = @_;
    for ($numerator, $denominator) {
        die "status(numerator, denominator) takes whole numbers >= 0\n"
            unless defined && /^[0-9]+\z/;
    }
    $self->[3]->_write($self->[4], Slotman::Worker::Direct::_packet(
        Slotman::Worker::Direct::WORK_STATUS, $self->[1], $numerator, $denominator));
    return;
}

sub data {
    my ($self, $data) = @_;
    $self->[3]->_write($self->[4], Slotman::Worker::Direct::_packet(
        Slotman::Worker::Direct::WORK_DATA, $self->[1], Slotman::Worker::Job::_bytes($data // '')));
    return;
}

sub warning {
    my ($self, $data) = @_;
    $self->[3]->_write($self->[4], Slotman::Worker::Direct::_packet(
        Slotman::Worker::Direct::WORK_WARNING, $self->[1], Slotman::Worker::Job::_bytes($data // '')));
    return;
}

1;
