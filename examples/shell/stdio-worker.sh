#!/usr/bin/env bash
# A slotman `stdio` handler in bash.
#
# Functions: `upper` (ASCII letters to upper case) and `reverse` (the
# payload's bytes, reversed). Anything else: FAIL. Binary-safe: payloads go
# through files, never through shell variables.
#
# Framing (see examples/README.md): one ASCII header line per frame, then
# exactly SIZE raw bytes where the header has a SIZE. A job comes as
# `JOB FUNCTION HANDLE UNIQUE SIZE`, or as `JOBX` with sizes in place of the
# fields when they are not plain words (spaces, UTF-8, any byte). stdout is
# the channel to slotman: print nothing else there; logs go to stderr.
set -euo pipefail
export LC_ALL=C

result=$(mktemp)
unique_id=$(mktemp)    # the job's unique id, byte for byte (JOBX)
trap 'rm -f "$result" "$unique_id"' EXIT

echo READY
# `read` takes the header byte by byte, and `head -c` reads exactly SIZE
# bytes, so neither eats into the next frame.
while IFS=' ' read -r word function handle unique size; do
	case $word in
	JOB) ;;
	JOBX)
		# Sizes instead of fields: the fields' bytes come first, then the
		# payload. Function names and handles hold no newline; a unique id
		# may end in one, which $(...) would drop, so it goes to a file.
		function=$(head -c "$function")
		handle=$(head -c "$handle")
		if [[ $unique != - ]]; then
			head -c "$unique" >"$unique_id"
			unique="$unique bytes in $unique_id"
		fi
		;;
	*) echo "unexpected frame: $word" >&2; exit 1 ;;
	esac
	echo "job $handle ($unique) $function" >&2
	case $function in
	upper) head -c "$size" | tr 'a-z' 'A-Z' >"$result" ;;
	reverse) head -c "$size" | "$(dirname "$0")/reverse.sh" >"$result" ;;
	*) head -c "$size" >/dev/null; echo FAIL; continue ;;
	esac
	printf 'COMPLETE %d\n' "$(wc -c <"$result")"
	cat "$result"
done
