#!/usr/bin/env bash
# Set up everything hyops needs on a fresh Debian machine, as root. Idempotent and quick when done.
#   system: docker.io (dockerd, for the local cloud), busybox-static (the tiny service image),
#           chromium (report rendering tests), clojure + libnrepl-clojure (reference nREPL client),
#           iproute2 + util-linux (namespaces), iptables (a test closes the API port), git (bootstrap
#           lists), tmux (console tests), emacs-nox + neovim (real editors for (edit x))
#   python: a virtualenv in .venv with hyops installed in editable mode, with its dev tools
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "hyops setup: run as root (the local cloud makes network namespaces and runs dockerd)" >&2
  exit 1
fi

need=()
command -v dockerd >/dev/null || need+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
command -v iptables >/dev/null || need+=(iptables)
command -v git >/dev/null || need+=(git)
command -v tmux >/dev/null || need+=(tmux)
command -v chromium >/dev/null || need+=(chromium)
# real editors that (edit x) hands files to in the tests (emacsclient, nvim --remote)
command -v emacsclient >/dev/null || need+=(emacs-nox)
command -v nvim >/dev/null || need+=(neovim)
# the reference nREPL client (Clojure's own), which the nREPL tests talk to
dpkg -s libnrepl-clojure >/dev/null 2>&1 || need+=(clojure libnrepl-clojure)
if [ ${#need[@]} -gt 0 ]; then
  echo "hyops setup: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

stamp=.venv/.hyops-installed
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "hyops setup: installing Python dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
