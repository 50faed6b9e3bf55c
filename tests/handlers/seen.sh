#!/usr/bin/env bash
# A handler for tests/slot.rs that answers every job with what it was told,
# byte for byte: the function name without prefix, then, when the job has a
# unique id, a NUL and the unique id.
#
# Usage: seen.sh stdio | seen.sh exec. As an exec handler it answers from
# the environment, where GEARMAN_UNIQUE is empty for "none", so a NUL always
# follows; it fails the job if GEARMAN_FUNCTION is not the prefixed name.
set -u
export LC_ALL=C

if [[ ${1:-} == exec ]]; then
	cat >/dev/null
	[[ $GEARMAN_FUNCTION == "t::$SLOTMAN_FUNCTION" ]] || exit 3
	printf '%s\0%s' "$SLOTMAN_FUNCTION" "$GEARMAN_UNIQUE"
	exit 0
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo READY
while IFS=' ' read -r word function handle unique size; do
	case $word in
	JOB)
		printf '%s' "$function" >"$out"
		[[ $unique == - ]] || printf '\0%s' "$unique" >>"$out"
		;;
	JOBX)
		# Sizes instead of fields: the fields' bytes lead the payload. Kept
		# in a file: $(...) would drop a trailing newline.
		head -c "$function" >"$out"
		head -c "$handle" >/dev/null
		if [[ $unique != - ]]; then
			printf '\0' >>"$out"
			head -c "$unique" >>"$out"
		fi
		;;
	*) echo "seen.sh: unexpected frame: $word" >&2; exit 2 ;;
	esac
	head -c "$size" >/dev/null
	printf 'COMPLETE %d\n' "$(wc -c <"$out")"
	cat "$out"
done
