#!/usr/bin/env php
<?php
// A slotman `stdio` handler in PHP.
//
// Function: `reverse` (the payload's bytes, reversed). Anything else: FAIL.
//
// Framing (see examples/README.md): one ASCII header line per frame, then
// exactly SIZE raw bytes where the header has a SIZE. A job comes as
// `JOB FUNCTION HANDLE UNIQUE SIZE`, or as `JOBX` with sizes in place of the
// fields when they are not plain words (spaces, UTF-8, any byte). stdout is
// the channel to slotman: print nothing else there; logs go to stderr.

// The CLI prints warnings to stdout by default, which would break the framing.
ini_set('display_errors', 'stderr');

// Writes one frame; the body, when given, follows a "SIZE" field.
function send_frame(string $header, ?string $body = null): void
{
    fwrite(STDOUT, $body === null ? "$header\n" : "$header " . strlen($body) . "\n" . $body);
    fflush(STDOUT);
}

$functions = [
    'reverse' => fn(string $payload): string => strrev($payload),
];

// Exactly $n bytes of input.
function read_exactly(int $n): string
{
    $buf = '';
    while (strlen($buf) < $n) {
        $chunk = fread(STDIN, $n - strlen($buf));
        if ($chunk === false || $chunk === '') {
            exit(1);   // end of input inside a job
        }
        $buf .= $chunk;
    }
    return $buf;
}

send_frame('READY');
while (($line = fgets(STDIN)) !== false) {   // false = end of input: slotman is done
    [$word, $function, $handle, $unique, $size] = explode(' ', rtrim($line, "\n")) + [4 => null];
    if (($word !== 'JOB' && $word !== 'JOBX') || $size === null) {
        fwrite(STDERR, "unexpected frame: $line");
        exit(1);
    }
    if ($word === 'JOBX') {
        // Sizes instead of fields: the fields' bytes come first, then the payload.
        $function = read_exactly((int) $function);
        $handle = read_exactly((int) $handle);
        $unique = $unique === '-' ? null : read_exactly((int) $unique);
    } elseif ($unique === '-') {
        $unique = null;   // no unique id
    }
    $payload = read_exactly((int) $size);
    fwrite(STDERR, "job $handle (" . ($unique ?? '-') . ") $function\n");
    if (isset($functions[$function])) {
        send_frame('COMPLETE', $functions[$function]($payload));
    } else {
        send_frame('FAIL');
    }
}
