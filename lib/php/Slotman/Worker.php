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
    /** @internal */
    public function __construct(
        private string $function,
        private string $handle,
        private ?string $unique,
        private IO $io
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
        $this->io->send("STATUS $numerator $denominator\n");
    }

    /** WORK_DATA: part of the result, sent now. */
    public function data(string $data): void
    {
        $this->io->sendFrame('DATA', $data);
    }

    /** WORK_WARNING. */
    public function warning(string $data): void
    {
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
    $io->send($ready);
    while (($job = $io->nextJob()) !== null) {
        [$function, $handle, $unique, $payload] = $job;
        try {
            if (!isset($known[$function])) {
                throw new \RuntimeException("$name has no function `$function`");
            }
            $result = $worker->$function($payload, new Job($function, $handle, $unique, $io));
            if ($result === null) {
                $result = '';
            } elseif (is_int($result) || is_float($result)) {
                $result = (string) $result;
            } elseif (!is_string($result)) {
                throw new \UnexpectedValueException("$name::$function returned " . get_debug_type($result) . '; return a string (encode it first, e.g. with json_encode)');
            }
        } catch (\Throwable $e) {
            $message = $e->getMessage() !== '' ? $e->getMessage() : get_class($e);
            fwrite(\STDERR, "slotman: $name::$function: $message\n" . $e->getTraceAsString() . "\n");
            $io->sendFrame('EXCEPTION', $message);
            continue;
        }
        $io->sendFrame('COMPLETE', $result);
    }
    return 0;
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
