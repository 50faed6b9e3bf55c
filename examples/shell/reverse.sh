#!/bin/sh
# A slotman `exec` handler in plain sh: run once per job, the payload on
# stdin, the result on stdout, exit status 0 for success.
#
# Writes the payload's bytes in reverse order (all of them: newlines and NUL
# bytes included; a payload without a trailing newline gets none added).
# The job's details are in the environment: $SLOTMAN_FUNCTION,
# $GEARMAN_FUNCTION, $GEARMAN_HANDLE, $GEARMAN_UNIQUE.
set -eu
export LC_ALL=C

# One octal byte code per line, reversed, turned into printf escapes (\101).
escapes=$(od -An -v -to1 | tr -s ' \n' '\n\n' | sed '/^$/d' | tac | sed 's/^/\\/' | tr -d '\n')
printf "$escapes"
