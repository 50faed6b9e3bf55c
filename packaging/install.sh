#!/bin/sh
# Installs slotman as a systemd service from a built tree, on hosts without
# Debian's dpkg (on Debian, packaging/build-deb makes a package instead):
#
#   cargo build --profile dist                 # or --release: quicker, bigger
#   sudo packaging/install.sh                  # onto this host
#   packaging/install.sh --destdir pkgroot     # into a staging tree (packages)
#
# Installs the binaries (stripped), the unit files, the docs and example
# handlers, and /etc/slotman/example.toml (never overwriting an existing
# file). It enables and starts nothing: see the printed next steps or
# packaging/README.md.
#
# Options:
#   --binary PATH    the slotman binary (default: target/dist/slotman, else
#                    target/release/slotman); slotman-slot, the slot runner,
#                    is taken from next to it
#   --prefix DIR     where bin/, libexec/ and share/ go (default: /usr)
#   --unitdir DIR    where the unit files go (default: /etc/systemd/system;
#                    a package would use /lib/systemd/system)
#   --destdir DIR    prepend DIR to every path; no daemon-reload, no checks
#   --uninstall      remove what an install put there, except /etc/slotman,
#                    and the enable links of slotman@ instances. Refuses
#                    while any slotman@ instance runs: stop them first
#                    (systemctl stop 'slotman@*'; a stop drains)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
targetdir=${CARGO_TARGET_DIR:-$top/target}
binary=$targetdir/dist/slotman
[ -x "$binary" ] || binary=$targetdir/release/slotman
prefix=/usr
unitdir=/etc/systemd/system
destdir=
uninstall=no

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --unitdir) unitdir=$2; shift 2 ;;
    --destdir) destdir=$2; shift 2 ;;
    --uninstall) uninstall=yes; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage ;;
  esac
done
case "$prefix$unitdir" in /*/*|/*) ;; *) echo "install.sh: --prefix and --unitdir must be absolute" >&2; exit 2 ;; esac
[ -z "$destdir" ] || destdir=$(mkdir -p "$destdir" && cd "$destdir" && pwd)

bin=$prefix/bin/slotman
# The manager looks for its slot runner next to its own executable, then in
# ../libexec/slotman/ (where a package puts it: off PATH).
runner_bin=$prefix/libexec/slotman/slotman-slot
old_runner_bin=$prefix/bin/slotman-slot
share=$prefix/share/slotman
doc=$prefix/share/doc/slotman
mandir=$prefix/share/man
bashcomp=$prefix/share/bash-completion/completions/slotman
zshcomp=$prefix/share/zsh/site-functions/_slotman
fishcomp=$prefix/share/fish/vendor_completions.d/slotman.fish
reload_systemd() {
  if [ -z "$destdir" ] && [ -d /run/systemd/system ] && [ "$(id -u)" = 0 ]; then
    systemctl daemon-reload
  fi
}

if [ "$uninstall" = yes ]; then
  # Removing the program under running managers would leave them without
  # their unit files and their next slots without a runner: refuse, and
  # say how to stop them (a stop drains: jobs in hand finish first).
  if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    running=$(systemctl list-units --plain --no-legend \
      --state=active,reloading,activating,deactivating 'slotman@*.service' |
      while read -r unit _; do printf '%s ' "$unit"; done)
    if [ -n "$running" ]; then
      echo "install.sh: slotman is running: ${running% }" >&2
      echo "install.sh: stop it first (each drains its jobs in hand): systemctl stop 'slotman@*'" >&2
      exit 1
    fi
  fi
  for f in "$bin" "$runner_bin" "$old_runner_bin" "$unitdir/slotman@.service" "$unitdir/slotman.slice"; do
    rm -f "$destdir$f"
  done
  rmdir "$destdir$prefix/libexec/slotman" 2>/dev/null || true
  # `systemctl enable slotman@NAME` made these links to the unit removed
  # above: they would dangle.
  for d in "$destdir"/etc/systemd/system/*.wants "$destdir"/etc/systemd/system/*.requires; do
    [ -d "$d" ] && rm -f "$d"/slotman@*.service "$d"/slotman.slice
  done
  rm -f "$destdir$mandir"/man1/slotman.1 "$destdir$mandir"/man1/slotman-*.1 \
        "$destdir$mandir"/man5/slotman.toml.5 "$destdir$bashcomp" "$destdir$zshcomp" "$destdir$fishcomp"
  rm -rf "$destdir$share" "$destdir$doc"
  reload_systemd
  echo "removed slotman; configs in $destdir/etc/slotman are kept"
  exit 0
fi

[ -x "$binary" ] || { echo "install.sh: no binary at $binary (cargo build --profile dist, or --binary PATH)" >&2; exit 1; }
if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: installing onto this host needs root (or use --destdir)" >&2; exit 1
fi

# The binaries, stripped (-s: a build's symbols and line tables are most
# of its size). install(1) replaces them by rename, so a running manager
# keeps its old copy until restarted, and its slots keep the old runner (it
# holds the runner it started with open). Without slotman-slot the manager
# runs slots as `slotman slot`, which works but costs each slot about 2 MB
# more resident memory.
runner=$(dirname "$binary")/slotman-slot
if [ -x "$runner" ]; then
  install -D -s -m 0755 "$runner" "$destdir$runner_bin"
else
  echo "install.sh: no slotman-slot next to $binary: slots will run as \`slotman slot\`" >&2
  rm -f "$destdir$runner_bin"
fi
# An older install.sh put the runner next to slotman, where it would win.
rm -f "$destdir$old_runner_bin"
install -D -s -m 0755 "$binary" "$destdir$bin"

# Unit files; ExecStart= follows --prefix.
install -d -m 0755 "$destdir$unitdir"
for u in slotman@.service slotman.slice; do
  sed "s|/usr/bin/slotman|$bin|g" "$top/systemd/$u" > "$destdir$unitdir/$u.tmp"
  chmod 0644 "$destdir$unitdir/$u.tmp"
  mv "$destdir$unitdir/$u.tmp" "$destdir$unitdir/$u"
done

# Example handlers and docs.
for f in python/worker.py perl/worker.pl php/worker.php shell/reverse.sh shell/stdio-worker.sh; do
  [ -f "$top/examples/$f" ] && install -D -m 0755 "$top/examples/$f" "$destdir$share/examples/$f"
done
for f in README.md ARCHITECTURE.md docs/configuration.md examples/README.md; do
  [ -f "$top/$f" ] || continue
  case "$f" in examples/*) dst=examples-README.md ;; *) dst=$(basename "$f") ;; esac
  install -D -m 0644 "$top/$f" "$destdir$doc/$dst"
done

# Man pages and completions, generated by the binary being installed.
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
"$binary" generate man "$gen/man" >/dev/null
"$binary" generate completions "$gen/completions" >/dev/null
for page in "$gen"/man/*.1; do install -D -m 0644 "$page" "$destdir$mandir/man1/$(basename "$page")"; done
install -D -m 0644 "$gen/man/slotman.toml.5" "$destdir$mandir/man5/slotman.toml.5"
install -D -m 0644 "$gen/completions/slotman.bash" "$destdir$bashcomp"
install -D -m 0644 "$gen/completions/_slotman" "$destdir$zshcomp"
install -D -m 0644 "$gen/completions/slotman.fish" "$destdir$fishcomp"

# Configs: the directory, and the example unless one is already there.
install -d -m 0755 "$destdir/etc/slotman"
if [ -e "$destdir/etc/slotman/example.toml" ]; then
  echo "kept the existing /etc/slotman/example.toml"
else
  sed "s|/usr/share/slotman|$share|g" "$here/example.toml" > "$destdir/etc/slotman/example.toml"
  chmod 0644 "$destdir/etc/slotman/example.toml"
fi

if [ -z "$destdir" ]; then
  "$bin" check /etc/slotman/example.toml
  reload_systemd
fi

cat <<NEXT
installed slotman into ${destdir:-/}: $bin, $runner_bin, $unitdir/slotman@.service, $unitdir/slotman.slice
next:
  cp /etc/slotman/example.toml /etc/slotman/SERVICE.toml && \$EDITOR /etc/slotman/SERVICE.toml
  slotman check /etc/slotman/SERVICE.toml
  systemctl enable --now slotman@SERVICE
  slotman status SERVICE; journalctl -u slotman@SERVICE
NEXT
