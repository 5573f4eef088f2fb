# Sourced by the scripts: put the project's venv first on PATH when there is one.
if [ -x "$(dirname "${BASH_SOURCE[0]}")/../.venv/bin/python" ]; then
  PATH="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin:$PATH"
  export PATH
fi
