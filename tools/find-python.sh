#!/usr/bin/env bash
# Print a Python interpreter >= 3.12. Tries $PYTHON, python3.12, python3.13, python3, and
# pyenv-installed versions (pyenv shims only run with a version selected).
ok() { "$@" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
for c in "${PYTHON:-}" python3.12 python3.13 python3; do
  [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && ok "$c" && { command -v "$c"; exit 0; }
done
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])' | sort -V); do
    p="$(pyenv root)/versions/$v/bin/python3"
    [ -x "$p" ] && ok "$p" && { echo "$p"; exit 0; }
  done
fi
for p in "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
  [ -x "$p" ] && ok "$p" && { echo "$p"; exit 0; }
done
echo "no Python >= 3.12 found; install one or set PYTHON=/path/to/python3.12" >&2
exit 1
