#!/usr/bin/env php
<?php
// A slotman `stdio` handler in PHP.
//
// Function: `reverse` (the payload's bytes, reversed). Anything else: FAIL.
//
// Framing (see examples/README.md): one ASCII header line per frame, then
// exactly SIZE raw bytes where the header has a SIZE. stdout is the channel to
// slotman: print nothing else there; logs go to stderr.

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

send_frame('READY');
while (($line = fgets(STDIN)) !== false) {   // false = end of input: slotman is done
    [$word, $function, $handle, $unique, $size] = explode(' ', rtrim($line, "\n")) + [4 => null];
    if ($word !== 'JOB' || $size === null) {
        fwrite(STDERR, "unexpected frame: $line");
        exit(1);
    }
    $payload = '';
    while (strlen($payload) < (int) $size) {
        $chunk = fread(STDIN, (int) $size - strlen($payload));
        if ($chunk === false || $chunk === '') {
            exit(1);   // end of input inside a payload
        }
        $payload .= $chunk;
    }
    fwrite(STDERR, "job $handle ($unique) $function\n");
    if (isset($functions[$function])) {
        send_frame('COMPLETE', $functions[$function]($payload));
    } else {
        send_frame('FAIL');
    }
}
