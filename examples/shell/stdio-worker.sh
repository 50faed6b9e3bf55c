#!/usr/bin/env bash
# A slotman `stdio` handler in bash.
#
# Functions: `upper` (ASCII letters to upper case) and `reverse` (the
# payload's bytes, reversed). Anything else: FAIL. Binary-safe: payloads go
# through files, never through shell variables.
#
# Framing (see examples/README.md): one ASCII header line per frame, then
# exactly SIZE raw bytes where the header has a SIZE. stdout is the channel to
# slotman: print nothing else there; logs go to stderr.
set -euo pipefail
export LC_ALL=C

result=$(mktemp)
trap 'rm -f "$result"' EXIT

echo READY
# `read` takes the header byte by byte, and `head -c` reads exactly SIZE
# bytes, so neither eats into the next frame.
while IFS=' ' read -r word function handle unique size; do
	[[ $word == JOB ]] || { echo "unexpected frame: $word" >&2; exit 1; }
	echo "job $handle ($unique) $function" >&2
	case $function in
	upper) head -c "$size" | tr 'a-z' 'A-Z' >"$result" ;;
	reverse) head -c "$size" | "$(dirname "$0")/reverse.sh" >"$result" ;;
	*) head -c "$size" >/dev/null; echo FAIL; continue ;;
	esac
	printf 'COMPLETE %d\n' "$(wc -c <"$result")"
	cat "$result"
done
