#!/bin/sh
# Starts the kernel runtime: pip-installs KERNEL_PACKAGES (space-separated requirements), then
# replaces itself with `kernel-runtime serve "$@"` so the server receives the signals.
# pip and kernel-runtime come from PATH: the image's venv, or any venv put first on PATH.
set -eu

if [ -n "${KERNEL_PACKAGES:-}" ]; then
    echo "entrypoint: installing KERNEL_PACKAGES: $KERNEL_PACKAGES" >&2
    # Unquoted on purpose: word splitting separates the packages. Globbing is off so that a
    # requirement such as pkg[extra] is never matched against file names.
    set -f
    # shellcheck disable=SC2086
    if ! pip install $KERNEL_PACKAGES; then
        echo "entrypoint: ERROR: pip install of KERNEL_PACKAGES failed ($KERNEL_PACKAGES); not starting" >&2
        exit 1
    fi
    set +f
    echo "entrypoint: KERNEL_PACKAGES installed" >&2
fi

exec kernel-runtime serve "$@"
