#!/bin/sh
# Starts the kernel runtime: pip-installs KERNEL_PACKAGES (space-separated requirements) under
# the image's constraints, then replaces itself with `kernel-runtime serve "$@"` so the server
# receives the signals. pip and kernel-runtime come from PATH: the image's venv, or any venv put
# first on PATH (then point KERNEL_CONSTRAINTS at a constraints file, e.g. the repository's).
set -eu

# The versions the service runs with (the Dockerfile copies constraints.txt there). Installing
# under them means a user's list can add packages but never replace pyarrow, polars, fastapi or
# any other pinned one: pip refuses a conflict and names the package, and the container stops.
constraints="${KERNEL_CONSTRAINTS:-/opt/kernel/constraints.txt}"

if [ -n "${KERNEL_PACKAGES:-}" ]; then
    if [ ! -r "$constraints" ]; then
        echo "entrypoint: ERROR: constraints file $constraints (KERNEL_CONSTRAINTS) not found; not installing KERNEL_PACKAGES ($KERNEL_PACKAGES) without it; not starting" >&2
        exit 1
    fi
    echo "entrypoint: installing KERNEL_PACKAGES: $KERNEL_PACKAGES (under the constraints in $constraints)" >&2
    # Unquoted on purpose: word splitting separates the packages. Globbing is off so that a
    # requirement such as pkg[extra] is never matched against file names.
    set -f
    # shellcheck disable=SC2086
    if ! pip install -c "$constraints" $KERNEL_PACKAGES; then
        echo "entrypoint: ERROR: pip install of KERNEL_PACKAGES failed ($KERNEL_PACKAGES); they must fit the service's pinned packages in $constraints (pip's message above names any package in conflict); not starting" >&2
        exit 1
    fi
    set +f
    echo "entrypoint: KERNEL_PACKAGES installed" >&2
fi

exec kernel-runtime serve "$@"
