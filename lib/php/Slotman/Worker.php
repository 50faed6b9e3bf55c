<?php
/*
 * slotman's handler library for PHP: a worker is a class that extends
 * \Slotman\Worker, and every public method it declares is a Gearman function.
 *
 *   class TestWorker extends \Slotman\Worker {
 *       public function reverse(string $payload, $job) { return strrev($payload); }
 *   }
 *
 * slotman runs it for `kind = "php"` (DESIGN.md, "Seed-style workers"): it
 * loads the class from TestWorker.php in the worker's `libs`, announces its
 * methods with `READY name...` and then speaks slotman's stdio framing
 * (examples/README.md) on the pipes it was started with. A method returns a
 * string (null is empty, numbers are written out); what it throws fails the
 * job with WORK_EXCEPTION and the message. No extension beyond PHP's core.
 */

namespace Slotman;

/** Longest header line slotman reads, newline included. */
const MAX_HEADER = 1024;

/** Base class of a worker: one instance per handler process, created before the first job. */
abstract class Worker
{
}

/** What a method gets with its payload: who the job is, and a way to send progress. */
final class Job
{
    /** @internal $io is the framing (IO), or the job server's connection (Direct, with $link) */
    public function __construct(
        private string $function,
        private string $handle,
        private ?string $unique,
        private IO|Direct $io,
        private ?Link $link = null
    ) {
    }

    /** The function's name without the worker's prefix. */
    public function function(): string
    {
        return $this->function;
    }

    /** The job server's handle. */
    public function handle(): string
    {
        return $this->handle;
    }

    /** The client's unique id, or null. */
    public function unique(): ?string
    {
        return $this->unique;
    }

    /** WORK_STATUS: `$job->status(3, 10)` (3 of 10 done). */
    public function status(int $numerator, int $denominator): void
    {
        if ($numerator < 0 || $denominator < 0) {
            throw new \InvalidArgumentException('status(numerator, denominator) takes whole numbers >= 0');
        }
        if ($this->link !== null) {
            $this->io->write($this->link, Direct::packet(Direct::WORK_STATUS, $this->handle, (string) $numerator, (string) $denominator));
            return;
        }
        $this->io->send("STATUS $numerator $denominator\n");
    }

    /** WORK_DATA: part of the result, sent now. */
    public function data(string $data): void
    {
        if ($this->link !== null) {
            $this->io->write($this->link, Direct::packet(Direct::WORK_DATA, $this->handle, $data));
            return;
        }
        $this->io->sendFrame('DATA', $data);
    }

    /** WORK_WARNING. */
    public function warning(string $data): void
    {
        if ($this->link !== null) {
            $this->io->write($this->link, Direct::packet(Direct::WORK_WARNING, $this->handle, $data));
            return;
        }
        $this->io->sendFrame('WARNING', $data);
    }
}

/**
 * The framing's pipes. slotman's stdin and stdout become private streams;
 * fd 0 is then /dev/null and fd 1 goes to stderr, so that whatever a method
 * echoes (or reads), and PHP's own warnings, cannot break the framing.
 * @internal
 */
final class IO
{
    /** @var resource */
    private $in;
    /** @var resource */
    private $out;
    /** @var array<int, resource> kept open: they hold fds 0 and 1 */
    private array $held = [];

    public function __construct()
    {
        ini_set('display_errors', 'stderr');
        $in = fopen('php://fd/0', 'rb');
        $out = fopen('php://fd/1', 'wb');
        if ($in === false || $out === false) {
            throw new \RuntimeException('slotman: cannot take stdin and stdout');
        }
        $this->in = $in;
        $this->out = $out;
        if (!self::redirectWithFfi()) {
            // PHP itself has no dup2: closing STDIN and STDOUT frees fds 0
            // and 1, and the next two descriptors opened take them, lowest
            // first. The STDIN and STDOUT constants are then closed streams.
            fclose(\STDIN);
            fclose(\STDOUT);
            $this->held[] = fopen('/dev/null', 'rb');
            $this->held[] = fopen('php://stderr', 'wb');
        }
    }

    /**
     * fd 0 to /dev/null and fd 1 to stderr with libc's dup2, through FFI
     * where PHP has it (CLI, ffi.enable not off): STDIN and STDOUT stay
     * usable streams, now reading nothing and writing to stderr.
     */
    private static function redirectWithFfi(): bool
    {
        if (!class_exists(\FFI::class, false) || ini_get('ffi.enable') === '0') {
            return false;
        }
        try {
            $libc = \FFI::cdef('int dup2(int oldfd, int newfd); int open(const char *path, int flags); int close(int fd);', 'libc.so.6');
            $null = $libc->open('/dev/null', 0);
            if ($null < 0 || $libc->dup2($null, 0) < 0 || $libc->dup2(2, 1) < 0) {
                return false;
            }
            $libc->close($null);
            return true;
        } catch (\Throwable $e) {
            return false;
        }
    }

    /** @return resource slotman's end of stdin (the library mode reads the runner's commands on it) */
    public function input()
    {
        return $this->in;
    }

    public function send(string $bytes): void
    {
        $length = strlen($bytes);
        for ($off = 0; $off < $length; $off += $n) {
            $n = fwrite($this->out, $off === 0 ? $bytes : substr($bytes, $off));
            if ($n === false || $n === 0) {
                throw new \RuntimeException('slotman: writing stdout failed');
            }
        }
        fflush($this->out);
    }

    public function sendFrame(string $word, string $body): void
    {
        $this->send($word . ' ' . strlen($body) . "\n" . $body);
    }

    private function take(int $size): string
    {
        $data = '';
        while (strlen($data) < $size) {
            $more = stream_get_contents($this->in, $size - strlen($data));
            if ($more === false || $more === '') {
                throw new \RuntimeException('slotman: stdin ended in the middle of a job');
            }
            $data .= $more;
        }
        return $data;
    }

    /** [function, handle, unique, payload], or null once slotman closed stdin (the slot is stopping). */
    public function nextJob(): ?array
    {
        $line = fgets($this->in, MAX_HEADER + 1);
        if ($line === false) {
            return null;
        }
        if (substr($line, -1) !== "\n") {
            throw new \RuntimeException('slotman: bad header from slotman');
        }
        $fields = explode(' ', substr($line, 0, -1));
        if (count($fields) !== 5 || !in_array($fields[0], ['JOB', 'JOBX'], true) || !ctype_digit($fields[4])) {
            throw new \RuntimeException('slotman: unexpected frame from slotman: ' . substr($line, 0, 80));
        }
        [$word, $function, $handle, $unique, $size] = $fields;
        if ($word === 'JOBX') {
            $function = $this->take((int) $function);
            $handle = $this->take((int) $handle);
            $unique = $unique === '-' ? null : $this->take((int) $unique);
        } elseif ($unique === '-') {
            $unique = null;
        }
        return [$function, $handle, $unique, $this->take((int) $size)];
    }
}

/**
 * The class's functions by the seed's rule: public methods the class
 * declares itself (not inherited), not static, not starting with `_`, not in
 * capitals only. Sorted, so READY is stable.
 * @internal
 */
function functions(\ReflectionClass $class): array
{
    $names = [];
    foreach ($class->getMethods(\ReflectionMethod::IS_PUBLIC) as $method) {
        $name = $method->getName();
        if ($method->class !== $class->getName() || $method->isStatic() || $method->isAbstract()
            || $name[0] === '_' || strtoupper($name) === $name) {
            continue;
        }
        if (!preg_match('/^[A-Za-z][A-Za-z0-9_]*$/', $name)) {
            fwrite(\STDERR, "slotman: {$class->getName()}::$name is not registered: a function name must be ASCII letters, digits and _\n");
            continue;
        }
        $names[] = $name;
    }
    sort($names, SORT_STRING);
    return $names;
}

/**
 * The worker class $name from $name.php in the first of $libs that has it;
 * $libs also go first on the include_path, for the worker's own requires.
 * @internal
 */
function load(string $name, array $libs): \ReflectionClass
{
    if (!preg_match('/^[A-Za-z_][A-Za-z0-9_]*$/', $name)) {
        throw new \RuntimeException("slotman: `$name` is not a PHP class name");
    }
    set_include_path(implode(PATH_SEPARATOR, array_merge($libs, [get_include_path()])));
    $file = null;
    foreach ($libs as $lib) {
        if (is_file("$lib/$name.php")) {
            $file = "$lib/$name.php";
            break;
        }
    }
    if ($file === null) {
        throw new \RuntimeException("slotman: no $name.php in " . implode(', ', $libs));
    }
    try {
        require_once $file;
    } catch (\Throwable $e) {
        throw new \RuntimeException("slotman: cannot load $name: " . $e->getMessage() . ' (' . $e->getFile() . ':' . $e->getLine() . ')');
    }
    if (!class_exists($name, false)) {
        throw new \RuntimeException("slotman: $file defines no class $name");
    }
    if (!is_subclass_of($name, Worker::class)) {
        throw new \RuntimeException("slotman: $name does not extend \\Slotman\\Worker; write `class $name extends \\Slotman\\Worker`");
    }
    return new \ReflectionClass($name);
}

/**
 * Entry point, run by slotman: run([NAME, LIB...]) serves jobs until stdin
 * ends; run(['--list', NAME, LIB...]) prints the functions, one per line
 * (`slotman check`). Returns the exit status.
 * @internal
 */
function run(array $args): int
{
    $listing = ($args[0] ?? null) === '--list';
    if ($listing) {
        array_shift($args);
    }
    $name = array_shift($args);
    if ($name === null) {
        throw new \RuntimeException('slotman: no worker class named');
    }
    // Before the class loads: what its file echoes (a newline after the
    // closing tag) goes to stderr.
    $io = new IO();
    $class = load($name, $args);
    $functions = functions($class);
    if ($listing) {
        $io->send(implode('', array_map(fn ($f) => "$f\n", $functions)));
        return 0;
    }
    if (!$functions) {
        throw new \RuntimeException("slotman: $name has no public methods to register");
    }
    $ready = implode(' ', array_merge(['READY'], $functions)) . "\n";
    if (strlen($ready) > MAX_HEADER) {
        throw new \RuntimeException("slotman: $name has too many methods to announce in one line of " . MAX_HEADER . ' bytes; move some to another worker');
    }
    $known = array_flip($functions);
    $worker = $class->newInstance();
    if (getenv('SLOTMAN_CONNECTION') === 'library') {
        // The library holds the job-server connections itself (Direct).
        return (new Direct($io, $name, $worker, $functions))->serve();
    }
    $io->send($ready);
    while (($job = $io->nextJob()) !== null) {
        [$function, $handle, $unique, $payload] = $job;
        [$ok, $bytes] = call($name, $worker, $known, $function, $payload, new Job($function, $handle, $unique, $io));
        $io->sendFrame($ok ? 'COMPLETE' : 'EXCEPTION', $bytes);
    }
    return 0;
}

/**
 * Runs one job's method: [true, result] or [false, exception message],
 * the exception said on stderr.
 * @internal
 */
function call(string $name, Worker $worker, array $known, string $function, string $payload, $job): array
{
    try {
        if (!isset($known[$function])) {
            throw new \RuntimeException("$name has no function `$function`");
        }
        $result = $worker->$function($payload, $job);
        if ($result === null) {
            $result = '';
        } elseif (is_int($result) || is_float($result)) {
            $result = (string) $result;
        } elseif (!is_string($result)) {
            throw new \UnexpectedValueException("$name::$function returned " . get_debug_type($result) . '; return a string (encode it first, e.g. with json_encode)');
        }
        return [true, $result];
    } catch (\Throwable $e) {
        $message = $e->getMessage() !== '' ? $e->getMessage() : get_class($e);
        fwrite(\STDERR, "slotman: $name::$function: $message\n" . $e->getTraceAsString() . "\n");
        return [false, $message];
    }
}

/**
 * run() with a failure to start said on one line (the last one on stderr,
 * which slotman shows in the worker's status) and exit status 1.
 * @internal
 */
function main(array $args): int
{
    try {
        return run($args);
    } catch (\Throwable $e) {
        fwrite(\STDERR, $e->getMessage() . "\n");
        return 1;
    }
}

/**
 * One job server as the library mode sees it.
 * @internal
 */
final class Link
{
    /** @var resource|null */
    public $sock = null;
    public string $buf = '';
    /** 'down', 'awake' (may have jobs), 'asleep' (PRE_SLEEP sent) */
    public string $state = 'down';
    public float $retry = 0.0;
    public float $backoff = Direct::BACKOFF_MIN;
    public float $heard = 0.0;
    public ?float $echo = null;
    public ?string $said = null;

    public function __construct(public string $addr)
    {
    }
}

/**
 * The library mode (`connection = "library"`, SLOTMAN_CONNECTION=library):
 * the library holds the job-server connections itself (the Gearman worker
 * protocol over stream_socket_client) and tells its runner, on the stdout
 * it took over, what the runner would otherwise have seen itself:
 * `READY f...`, `LINK ADDR [why]`, `BUSY FUNCTION HANDLE`,
 * `DONE COMPLETE|EXCEPTION|TIMEOUT`, `IDLE`; it reads STOP (or EOF), PAUSE and
 * RESUME from the runner on stdin and finishes the job in hand first. The
 * runner keeps supervision, limits, `timeout` (by killing: the job server
 * re-queues the job) and counts `workleft`, which the library obeys too.
 * @internal
 */
final class Direct
{
    public const CAN_DO = 1, PRE_SLEEP = 4, NOOP = 6, NO_JOB = 10, WORK_STATUS = 12,
        WORK_COMPLETE = 13, WORK_FAIL = 14, ECHO_REQ = 16, ECHO_RES = 17, ERROR = 19, SET_CLIENT_ID = 22,
        WORK_EXCEPTION = 25, WORK_DATA = 28, WORK_WARNING = 29, GRAB_JOB_UNIQ = 30, JOB_ASSIGN_UNIQ = 31;
    /** The runner's own figures (src/slot/connection.rs), in seconds. */
    public const REPLY_TIMEOUT = 5.0, KEEPALIVE = 10.0, BACKOFF_MIN = 0.1, BACKOFF_MAX = 5.0;

    /** @var Link[] */
    private array $links = [];
    /** @var resource */
    private $ctl;
    private bool $ctlEof = false;
    private string $ctlBuf = '';
    private string $prefix;
    private string $register;
    private array $known;
    private int $workleft;
    private int $maxPacket;
    private int $done = 0;
    private bool $stopping = false;
    private bool $paused = false;
    private bool $idle = true;
    private string $grab;
    /** `timeout` in whole seconds (pcntl_alarm's unit), 0 for none or without pcntl. */
    private int $timeout = 0;
    private bool $late = false;
    private bool $calling = false;
    /** A DONE not yet written (see job()). */
    private string $held = '';
    /** SLOTMAN_REPORT=each: every DONE at once (measured in bench/seed.py). */
    private bool $each;

    public function __construct(private IO $io, private string $name, private Worker $worker, array $functions)
    {
        $addrs = array_values(array_filter(array_map('trim', explode(',', (string) getenv('SLOTMAN_JOB_SERVERS'))), 'strlen'));
        if (!$addrs) {
            throw new \RuntimeException('slotman: SLOTMAN_JOB_SERVERS names no job server');
        }
        foreach ($addrs as $addr) {
            $this->links[] = new Link($addr);
        }
        $want = trim((string) getenv('SLOTMAN_FUNCTIONS'));
        if ($want !== '') {
            $functions = array_values(array_intersect($functions, explode(' ', $want)));
            if (!$functions) {
                throw new \RuntimeException("slotman: none of SLOTMAN_FUNCTIONS is a method of $name");
            }
        }
        $this->known = array_flip($functions);
        $this->prefix = getenv('SLOTMAN_PREFIX') !== false ? getenv('SLOTMAN_PREFIX') : "$name::";
        $clientId = getenv('SLOTMAN_CLIENT_ID') ?: "slotman:$name:" . getmypid();
        $this->register = self::packet(self::SET_CLIENT_ID, $clientId)
            . implode('', array_map(fn ($f) => self::packet(self::CAN_DO, $this->prefix . $f), $functions));
        $this->workleft = (int) getenv('SLOTMAN_WORKLEFT');
        $this->maxPacket = (int) getenv('SLOTMAN_MAX_PACKET') ?: 64 << 20;
        $this->grab = self::packet(self::GRAB_JOB_UNIQ);
        $this->each = getenv('SLOTMAN_REPORT') === 'each';
        // `timeout`, enforced here so that the job fails (only this
        // connection can answer it), rounded up to whole seconds; the runner
        // kills the process if this does not work (no pcntl, a method stuck
        // in C code).
        $ms = (int) getenv('SLOTMAN_TIMEOUT_MS');
        if ($ms > 0 && function_exists('pcntl_alarm')) {
            $this->timeout = intdiv($ms + 999, 1000);
            pcntl_async_signals(true);
            pcntl_signal(\SIGALRM, function () {
                $this->late = true;
                if ($this->calling) {
                    throw new \RuntimeException('timed out');
                }
            });
        }
        $this->ctl = $io->input();
        stream_set_blocking($this->ctl, false);
        $io->send(implode(' ', array_merge(['READY'], $functions)) . "\n");
    }

    public static function packet(int $type, string ...$args): string
    {
        $body = implode("\0", $args);
        return "\0REQ" . pack('NN', $type, strlen($body)) . $body;
    }

    public function serve(): int
    {
        foreach ($this->links as $l) {
            $this->connect($l);
        }
        while (!$this->stopping) {
            foreach ($this->links as $l) {
                if ($l->state === 'awake' && !$this->paused) {
                    $this->grabFrom($l);
                }
                if ($this->stopping) {
                    break;
                }
            }
            if (!$this->stopping) {
                $this->sleep();
            }
        }
        $this->reportIdle();
        foreach ($this->links as $l) {
            if ($l->sock) {
                fclose($l->sock);
            }
        }
        return 0;
    }

    /** IDLE, after the DONE held back (see job()), if the runner has not heard it. */
    private function reportIdle(): void
    {
        if (!$this->idle) {
            $this->idle = true;
            $this->io->send($this->held . "IDLE\n");
            $this->held = '';
        }
    }

    /** Takes jobs from $l until it has none or the worker stops taking them; the next grab goes with each answer. */
    private function grabFrom(Link $l): void
    {
        if (!$this->write($l, $this->grab)) {
            return;
        }
        while (true) {
            $p = $this->read($l, self::REPLY_TIMEOUT);
            if ($p === null) {
                return;
            }
            [$type, $body] = $p;
            if ($type === self::JOB_ASSIGN_UNIQ) {
                $l->backoff = self::BACKOFF_MIN;
                if (!$this->job($l, $body)) {
                    return;
                }
            } elseif ($type === self::NO_JOB) {
                $l->backoff = self::BACKOFF_MIN;
                $l->state = 'asleep';
                $l->heard = microtime(true);
                $this->write($l, self::packet(self::PRE_SLEEP));
                return;
            } elseif ($type === self::ERROR) {
                $this->drop($l, 'job server said: ' . str_replace("\0", ' ', $body));
                return;
            } elseif ($type !== self::NOOP && $type !== self::ECHO_RES) {
                $this->drop($l, "unexpected packet type $type");
                return;
            }
        }
    }

    /** One job: reported, run, answered; whether the next grab went with it. */
    private function job(Link $l, string $body): bool
    {
        $parts = explode("\0", $body, 4);
        if (count($parts) !== 4) {
            $this->drop($l, 'malformed JOB_ASSIGN_UNIQ');
            return false;
        }
        [$handle, $function, $unique, $payload] = $parts;
        if (strncmp($function, $this->prefix, strlen($this->prefix)) === 0) {
            $function = substr($function, strlen($this->prefix));
        }
        $this->idle = false;
        $this->io->send("{$this->held}BUSY $function $handle\n");
        $this->held = '';
        $this->late = false;
        $this->calling = true;
        if ($this->timeout > 0) {
            pcntl_alarm($this->timeout);
        }
        [$ok, $bytes] = call($this->name, $this->worker, $this->known, $function, $payload,
            new Job($function, $handle, $unique === '' ? null : $unique, $this, $l));
        $this->calling = false;
        if ($this->timeout > 0) {
            pcntl_alarm(0);
        }
        if ($this->late) {
            // Past `timeout`: failed, as the runner would have failed it, and
            // this process replaced (the method may have left it in any state).
            fwrite(\STDERR, "slotman: {$this->name}::$function: timed out after {$this->timeout}s: job failed\n");
            $this->write($l, self::packet(self::WORK_FAIL, $handle));
            $this->held = "DONE TIMEOUT\n";
            $this->stopping = true;
            return false;
        }
        $answer = self::packet($ok ? self::WORK_COMPLETE : self::WORK_EXCEPTION, $handle, $bytes);
        if ($this->workleft > 0 && ++$this->done >= $this->workleft) {
            $this->stopping = true;
        }
        $more = !$this->stopping && !$this->paused;
        $sent = $this->write($l, $more ? $answer . $this->grab : $answer);
        // While jobs stream, a job's DONE goes out with the next BUSY (or
        // IDLE): one write and one wake-up of the runner per job, not two.
        $this->held = $ok ? "DONE COMPLETE\n" : "DONE EXCEPTION\n";
        if ($this->each) {
            $this->io->send($this->held);
            $this->held = '';
        }
        return $sent && $more;
    }

    /** The packet at the head of $l's buffer if it is all there; a bad one drops $l. */
    private function take(Link $l): ?array
    {
        $h = unpack('a4magic/Ntype/Nsize', $l->buf);
        if ($h['magic'] !== "\0RES") {
            $this->drop($l, 'not a Gearman response');
            return null;
        }
        if ($h['size'] > $this->maxPacket) {
            $this->drop($l, "packet of {$h['size']} bytes is over the limit");
            return null;
        }
        if (strlen($l->buf) < 12 + $h['size']) {
            return null;
        }
        $body = (string) substr($l->buf, 12, $h['size']);
        $l->buf = (string) substr($l->buf, 12 + $h['size']);
        return [$h['type'], $body];
    }

    /** The next packet from $l within $timeout seconds, else null ($l dropped); the runner's commands are read meanwhile. */
    private function read(Link $l, float $timeout): ?array
    {
        $deadline = null;
        while (true) {
            if (strlen($l->buf) >= 12) {
                $p = $this->take($l);
                if ($p !== null || $l->sock === null) {
                    return $p;
                }
            }
            $now = microtime(true);
            $deadline ??= $now + $timeout;
            if ($now >= $deadline) {
                $this->drop($l, "no answer within {$timeout}s");
                return null;
            }
            $r = $this->ctlEof ? [$l->sock] : [$l->sock, $this->ctl];
            $w = $e = null;
            $left = $deadline - $now;
            $n = @stream_select($r, $w, $e, (int) $left, (int) (($left - (int) $left) * 1e6));
            if ($n === false) {
                continue; // EINTR
            }
            foreach ($r as $ready) {
                if ($ready === $this->ctl) {
                    $this->control();
                    continue;
                }
                $got = fread($l->sock, 65536);
                if ($got === false || ($got === '' && feof($l->sock))) {
                    $this->drop($l, 'connection closed');
                    return null;
                }
                $l->buf .= $got;
            }
        }
    }

    /** Writes all of $bytes to $l (a job server that stops reading is dropped); false if $l was dropped. */
    public function write(Link $l, string $bytes): bool
    {
        if ($l->sock === null) {
            return false;
        }
        $deadline = null;
        while ($bytes !== '') {
            $n = @fwrite($l->sock, $bytes);
            if ($n === false) {
                $this->drop($l, 'writing failed');
                return false;
            }
            if ($n > 0) {
                $bytes = (string) substr($bytes, $n);
                continue;
            }
            $now = microtime(true);
            $deadline ??= $now + self::REPLY_TIMEOUT;
            if ($now >= $deadline) {
                $this->drop($l, 'job server stopped reading');
                return false;
            }
            $r = $e = null;
            $w = [$l->sock];
            @stream_select($r, $w, $e, 0, 100000);
        }
        return true;
    }

    private function connect(Link $l): void
    {
        $addr = str_contains($l->addr, ':') ? $l->addr : "{$l->addr}:4730";
        $ctx = stream_context_create(['socket' => ['tcp_nodelay' => true]]);
        $sock = @stream_socket_client("tcp://$addr", $errno, $errstr, self::REPLY_TIMEOUT, STREAM_CLIENT_CONNECT, $ctx);
        if ($sock === false) {
            $this->drop($l, $errstr !== '' ? $errstr : "error $errno");
            return;
        }
        stream_set_blocking($sock, false);
        stream_set_read_buffer($sock, 0);
        stream_set_write_buffer($sock, 0);
        // Asleep from the start: the job server answers PRE_SLEEP with a
        // NOOP when it has a job. So the library never waits on a job
        // server that has not spoken since it connected: one that accepts
        // and then hangs costs nothing but its keepalive.
        $l->sock = $sock;
        $l->buf = '';
        $l->state = 'asleep';
        $l->echo = null;
        $l->heard = microtime(true);
        $this->link($l, null);
        $this->write($l, $this->register . self::packet(self::PRE_SLEEP));
    }

    /** Drops $l (the job server re-queues its job, if any), to be reconnected to after a growing back-off. */
    private function drop(Link $l, string $why): void
    {
        if ($l->sock) {
            fclose($l->sock);
        }
        $l->sock = null;
        $l->state = 'down';
        $l->retry = microtime(true) + $l->backoff;
        $l->backoff = min($l->backoff * 2, self::BACKOFF_MAX);
        $this->link($l, (string) preg_replace('/\s+/', ' ', $why));
    }

    /** Tells the runner a link's state when it changes. */
    private function link(Link $l, ?string $why): void
    {
        if ($l->said === ($why ?? '')) {
            return;
        }
        $l->said = $why ?? '';
        if ($why !== null) {
            fwrite(\STDERR, "slotman: job server {$l->addr}: $why\n");
        }
        $this->io->send($why === null ? "LINK {$l->addr}\n" : "LINK {$l->addr} $why\n");
    }

    /** No job anywhere: waits for a NOOP, a reconnect or keepalive due, or the runner. */
    private function sleep(): void
    {
        $this->reportIdle();
        while (!$this->stopping) {
            $now = microtime(true);
            $wait = self::KEEPALIVE;
            $r = $this->ctlEof ? [] : [$this->ctl];
            foreach ($this->links as $l) {
                if ($l->state === 'down') {
                    if ($l->retry > $now) {
                        $wait = min($wait, $l->retry - $now);
                        continue;
                    }
                    $this->connect($l);
                    if ($l->state === 'down') {
                        continue;
                    }
                }
                if ($l->state === 'awake' && !$this->paused) {
                    return;
                }
                if ($l->state === 'asleep') {
                    if ($l->echo === null && $now - $l->heard >= self::KEEPALIVE) {
                        $l->echo = $now + self::REPLY_TIMEOUT;
                        if (!$this->write($l, self::packet(self::ECHO_REQ, 'ping'))) {
                            continue;
                        }
                    }
                    if ($l->echo !== null) {
                        if ($l->echo <= $now) {
                            $this->drop($l, 'no answer to a keepalive within ' . self::REPLY_TIMEOUT . 's');
                            continue;
                        }
                        $wait = min($wait, $l->echo - $now);
                    } else {
                        $wait = min($wait, $l->heard + self::KEEPALIVE - $now);
                    }
                }
                $r[] = $l->sock;
            }
            $wait = max($wait, 0.0);
            $w = $e = null;
            if (!$r) {
                usleep((int) ($wait * 1e6));
                continue;
            }
            $n = @stream_select($r, $w, $e, (int) $wait, (int) (($wait - (int) $wait) * 1e6));
            if (!$n) {
                continue;
            }
            foreach ($r as $ready) {
                if ($ready === $this->ctl) {
                    $this->control();
                    continue;
                }
                foreach ($this->links as $l) {
                    if ($l->sock !== $ready) {
                        continue;
                    }
                    $got = fread($l->sock, 65536);
                    if ($got === false || ($got === '' && feof($l->sock))) {
                        $this->drop($l, 'connection closed');
                        continue;
                    }
                    $l->buf .= $got;
                    $l->heard = microtime(true);
                    while ($l->sock !== null && strlen($l->buf) >= 12 && ($p = $this->take($l)) !== null) {
                        if ($p[0] === self::NOOP) {
                            $l->state = 'awake';
                        } elseif ($p[0] === self::ECHO_RES) {
                            $l->echo = null;
                        } elseif ($p[0] !== self::NO_JOB) {
                            $this->drop($l, "unexpected packet type {$p[0]}");
                        }
                    }
                }
            }
        }
    }

    /** The runner's commands, one a line: STOP (or EOF), PAUSE, RESUME. */
    private function control(): void
    {
        $got = fread($this->ctl, 4096);
        if ($got === false || ($got === '' && feof($this->ctl))) {
            $this->ctlEof = true;
            $this->stopping = true;
            return;
        }
        $this->ctlBuf .= $got;
        while (($at = strpos($this->ctlBuf, "\n")) !== false) {
            $word = substr($this->ctlBuf, 0, $at);
            $this->ctlBuf = (string) substr($this->ctlBuf, $at + 1);
            match ($word) {
                'STOP' => $this->stopping = true,
                'PAUSE' => $this->paused = true,
                'RESUME' => $this->paused = false,
                default => fwrite(\STDERR, "slotman: unknown command from the runner: $word\n"),
            };
        }
    }
}
