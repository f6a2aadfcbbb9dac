#!/usr/bin/env bash
# Set up what hyops needs on a fresh Debian machine, as root. Idempotent and quick when done.
#
#   scripts/setup.sh          the main job (`make repl`): what the local cloud and the console need
#       system: docker.io (dockerd, for the local cloud), busybox-static (the tiny service image),
#               iproute2 + util-linux (namespaces), git (bootstrap lists), mmdebstrap (images)
#       python: a virtualenv in .venv with hyops installed in editable mode
#   scripts/setup.sh --tests  the above, and what the tests need (`make test`, CI)
#       system: chromium (report rendering tests), clojure + libnrepl-clojure (reference nREPL
#               client), iptables (a test closes the API port), tmux (console tests), gcc
#               (the local cloud's clock faults: localcloud/clockstep.c),
#               emacs-nox + neovim (real editors for (edit x))
#       python: the dev tools (pytest, pexpect, ruff, import-linter, …)
#
# It prints one line per thing it installs, and the installers' own output only when they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

tests=0
case "${1:-}" in
  --tests) tests=1 ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [--tests]" >&2; exit 2 ;;
esac

if [ "$(id -u)" != 0 ]; then
  echo "hyops setup: run as root (the local cloud makes network namespaces and runs dockerd)" >&2
  exit 1
fi

# Run a command quietly: its output is shown only if it fails.
quietly() {
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "hyops setup: failed: $*" >&2
    return 1
  fi
  rm -f "$log"
}

need=()
command -v dockerd >/dev/null || need+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
command -v git >/dev/null || need+=(git)
# the image tool (hyops image build): Debian root filesystems for the node image and others
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ "$tests" = 1 ]; then
  command -v iptables >/dev/null || need+=(iptables)
  command -v tmux >/dev/null || need+=(tmux)
  # a C compiler: the local cloud builds localcloud/clockstep.c for its clock faults
  command -v cc >/dev/null || need+=(gcc libc6-dev)
  command -v chromium >/dev/null || need+=(chromium)
  # real editors that (edit x) hands files to in the tests (emacsclient, nvim --remote)
  command -v emacsclient >/dev/null || need+=(emacs-nox)
  command -v nvim >/dev/null || need+=(neovim)
  # the reference nREPL client (Clojure's own), which the nREPL tests talk to
  dpkg -s libnrepl-clojure >/dev/null 2>&1 || need+=(clojure libnrepl-clojure)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "hyops setup: installing ${need[*]}"
  quietly apt-get update -qq
  DEBIAN_FRONTEND=noninteractive quietly apt-get install -y -qq "${need[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "hyops setup: making .venv"
  quietly python3 -m venv .venv
fi
stamp=.venv/.hyops-installed
extras=.
if [ "$tests" = 1 ]; then
  stamp=.venv/.hyops-installed-tests
  extras='.[dev]'
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  what="Python dependencies"; [ "$tests" = 1 ] && what="Python dependencies and test tools"
  echo "hyops setup: installing $what into .venv"
  quietly .venv/bin/pip install --disable-pip-version-check --upgrade pip
  # a plain path entry (compat mode): setuptools' default editable finder costs every
  # process ~15-50 ms of imports at start-up, one-shots and the warm path's client included
  # (decision 0023); a setuptools without compat mode gets the default one
  quietly .venv/bin/pip install --disable-pip-version-check -e "$extras" \
    --config-settings editable_mode=compat ||
    quietly .venv/bin/pip install --disable-pip-version-check -e "$extras"
  touch "$stamp"
  # the test tools include the main job's dependencies
  [ "$tests" = 1 ] && touch .venv/.hyops-installed
fi
exit 0
