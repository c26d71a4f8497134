#!/usr/bin/env bash
# Prints the distribution's packages that hold the shared libraries a
# program loads (ldd), one per line: what its run-time image installs, the
# build image's versions without the -dev packages.
#
#   docker/runtime-packages.sh build/server/attnserve
set -euo pipefail
[[ $# -eq 1 && -x $1 ]] || { echo "usage: docker/runtime-packages.sh PROGRAM" >&2; exit 2; }
ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | while read -r lib; do
  # dpkg knows a library by the path its package installed, which with a
  # merged /usr may be the other one of /lib and /usr/lib.
  for path in "$lib" "$(realpath "$lib")" "/usr$lib" "${lib#/usr}"; do
    if owner=$(dpkg-query -S "$path" 2>/dev/null); then
      echo "${owner%%: *}"
      continue 2
    fi
  done
  echo "runtime-packages: no package holds $lib" >&2
  exit 1
done | sed 's/:amd64$\|:arm64$//' | sort -u
