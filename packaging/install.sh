#!/bin/sh
# Installs slotman as a systemd service from a built tree:
#
#   cargo build --release
#   sudo packaging/install.sh                  # onto this host
#   packaging/install.sh --destdir pkgroot     # into a staging tree (packages)
#
# Installs the binaries, the unit files, the docs and example handlers, and
# /etc/slotman/example.toml (never overwriting an existing file). It enables
# and starts nothing: see the printed next steps or packaging/README.md.
#
# Options:
#   --binary PATH    the slotman binary (default: target/release/slotman);
#                    slotman-slot, the slot runner, is taken from next to it
#   --prefix DIR     where bin/ and share/ go (default: /usr)
#   --unitdir DIR    where the unit files go (default: /etc/systemd/system;
#                    a package would use /lib/systemd/system)
#   --destdir DIR    prepend DIR to every path; no daemon-reload, no checks
#   --uninstall      remove what an install put there, except /etc/slotman
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
binary=$top/target/release/slotman
prefix=/usr
unitdir=/etc/systemd/system
destdir=
uninstall=no

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
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
# The manager looks for its slot runner next to its own executable.
runner_bin=$prefix/bin/slotman-slot
share=$prefix/share/slotman
doc=$prefix/share/doc/slotman
reload_systemd() {
  if [ -z "$destdir" ] && [ -d /run/systemd/system ] && [ "$(id -u)" = 0 ]; then
    systemctl daemon-reload
  fi
}

if [ "$uninstall" = yes ]; then
  for f in "$bin" "$runner_bin" "$unitdir/slotman@.service" "$unitdir/slotman.slice"; do
    rm -f "$destdir$f"
  done
  rm -rf "$destdir$share" "$destdir$doc"
  reload_systemd
  echo "removed slotman; configs in $destdir/etc/slotman are kept"
  exit 0
fi

[ -x "$binary" ] || { echo "install.sh: no binary at $binary (cargo build --release, or --binary PATH)" >&2; exit 1; }
if [ -z "$destdir" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: installing onto this host needs root (or use --destdir)" >&2; exit 1
fi

# The binaries. install(1) replaces them by rename, so a running manager
# keeps its old copy until restarted (its new slots find the new runner).
# Without slotman-slot the manager runs slots as `slotman slot`, which works
# but costs each slot about 2 MB more resident memory.
runner=$(dirname "$binary")/slotman-slot
if [ -x "$runner" ]; then
  install -D -m 0755 "$runner" "$destdir$runner_bin"
else
  echo "install.sh: no slotman-slot next to $binary: slots will run as \`slotman slot\`" >&2
  rm -f "$destdir$runner_bin"
fi
install -D -m 0755 "$binary" "$destdir$bin"

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
