# Sourced by the scripts: a project virtualenv in .venv, (re)installed when a requirements file changes.
ensure_venv() {
  local requirements="$1" stamp
  if [ ! -x .venv/bin/python ]; then
    echo "creating .venv..."
    python3 -m venv .venv
  fi
  stamp=".venv/.installed-$(cat requirements*.txt pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)-${requirements%.txt}"
  if [ ! -f "$stamp" ]; then
    echo "installing $requirements into .venv (once; log in .venv/install.log)..."
    {
      .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
      .venv/bin/python -m pip install --disable-pip-version-check -r "$requirements" &&
      .venv/bin/python -m pip install --disable-pip-version-check --no-deps -e .
    } > .venv/install.log 2>&1 || { tail -n 40 .venv/install.log; echo "pip install failed; see .venv/install.log" >&2; return 1; }
    touch "$stamp"
  fi
}
