#!/usr/bin/env bash
# A stdio handler for tests/handlers.rs: each function is one behaviour,
# good or bad, so one process can be driven through a whole story.
#
# Usage: stdio-test.sh [MODE]; MODE "notready" says HELLO instead of READY,
# "exit" exits before READY, "mute" never says anything (and holds
# $SLOTMAN_TEST_FIFO as `hang` does), "once" says READY only if the file
# $SLOTMAN_TEST_MARK does not exist yet (then creates it) and is mute
# otherwise, "stubborn" ignores the end of its stdin.
set -u
export LC_ALL=C

case "${1:-}" in
notready) echo HELLO; exec sleep 1000 ;;
exit) exit 7 ;;
mute)
	exec 3>"$SLOTMAN_TEST_FIFO"
	sleep 1000 &
	echo started >&3
	wait
	exit
	;;
once)
	[[ -e $SLOTMAN_TEST_MARK ]] && exec sleep 1000
	: >"$SLOTMAN_TEST_MARK"
	;;
esac

echo READY
while IFS=' ' read -r word function handle unique size; do
	case $word in
	JOB) ;;
	JOBX)
		# Sizes instead of fields: the fields' bytes lead the payload.
		function=$(head -c "$function")
		handle=$(head -c "$handle")
		[[ $unique == - ]] || unique=$(head -c "$unique")
		;;
	*) echo "stdio-test: unexpected frame: $word" >&2; exit 2 ;;
	esac
	case $function in
	echo)
		# Answers before reading the payload, then streams it back.
		printf 'COMPLETE %s\n' "$size"
		head -c "$size"
		;;
	quit)
		# Answers, then exits between jobs.
		head -c "$size" >/dev/null
		printf 'COMPLETE 3\nbye'
		exit 0
		;;
	early)
		# Answers at once and only then reads (and drops) the payload.
		printf 'COMPLETE 5\nearly'
		head -c "$size" >/dev/null
		;;
	events)
		head -c "$size" >/dev/null
		printf 'STATUS 1 3\n'
		printf 'DATA 5\npart\n'
		printf 'WARNING 4\nwarn'
		printf 'STATUS 3 3\n'
		printf 'COMPLETE 4\ndone'
		;;
	whoami)
		head -c "$size" >/dev/null
		answer="$handle $unique ${SLOTMAN_SERVICE-} ${SLOTMAN_WORKER-} ${SLOTMAN_SLOT-} ${SLOTMAN_FUNCTION-unset} ${NOTIFY_SOCKET-unset}"
		printf 'COMPLETE %s\n%s' "${#answer}" "$answer"
		;;
	fail) head -c "$size" >/dev/null; echo FAIL ;;
	exception) head -c "$size" >/dev/null; printf 'EXCEPTION 4\noops' ;;
	garbage) head -c "$size" >/dev/null; echo 'this is not a frame' ;;
	crash) head -c "$size" >/dev/null; printf 'STATUS 1 2\n'; exit 3 ;;
	kill) head -c "$size" >/dev/null; kill -KILL $$ ;;
	hang)
		# Holds $SLOTMAN_TEST_FIFO open in itself and in a child, says so on
		# the FIFO, and never answers: the FIFO reaches end of file only once
		# the whole process group is gone.
		head -c "$size" >/dev/null
		exec 3>"$SLOTMAN_TEST_FIFO"
		sleep 1000 &
		echo started >&3
		wait
		;;
	*) head -c "$size" >/dev/null; echo FAIL ;;
	esac
done
if [[ ${1:-} == stubborn ]]; then
	exec sleep 1000
fi
