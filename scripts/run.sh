#!/usr/bin/env bash
# Set heald up on a fresh Debian/Ubuntu machine and run it:
#   bash scripts/run.sh demo [ARGS...]   # the main job: heald demo
#   bash scripts/run.sh test [ARGS...]   # the test suite (pytest)
#   bash scripts/run.sh heald ARGS...    # any heald command
# Creates .venv, installs heald with its dependencies (again only when pyproject.toml changed),
# and installs the system packages in scripts/apt-packages.txt when run as root; otherwise it
# says exactly what to install.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-demo}"; shift || true

need_apt=()
while read -r pkg cmd; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done < scripts/apt-packages.txt
python_bin=""
for py in python3.13 python3.12 python3.11 python3; do
  if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python_bin="$py"; break
  fi
done
if [[ -z "$python_bin" ]]; then need_apt+=(python3); fi
if [[ -n "$python_bin" ]] && ! "$python_bin" -c 'import venv, ensurepip' >/dev/null 2>&1; then need_apt+=(python3-venv); fi
if ((${#need_apt[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "heald setup: installing ${need_apt[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "heald setup: these system packages are missing; install them and run again:" >&2
    echo "  sudo apt-get install -y --no-install-recommends ${need_apt[*]}" >&2
    exit 1
  fi
fi
[[ -n "$python_bin" ]] || python_bin=python3

if [[ ! -x .venv/bin/python ]]; then
  echo "heald setup: creating .venv with $python_bin" >&2
  "$python_bin" -m venv .venv
fi
stamp=.venv/.heald-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || "$(cat $stamp)" != "$want" ]]; then
  echo "heald setup: installing heald and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > $stamp
fi

case "$mode" in
  demo) exec .venv/bin/heald demo "$@" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
  heald) exec .venv/bin/heald "$@" ;;
  *) echo "usage: bash scripts/run.sh demo|test|heald [ARGS...]" >&2; exit 2 ;;
esac
