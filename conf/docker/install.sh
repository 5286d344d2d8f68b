#!/bin/sh
# The relay image's install steps (Dockerfile), run with the image's python; also run
# in a clean venv by tests/interop/test_image_install.py, since CI has no Docker engine.
#
#   install.sh dependencies   needs pyproject.toml and constraints.txt only: the image
#                             layer that changes when they do, not with every source edit
#   install.sh package        the sources, leaving the dependencies as they are
set -eu
case "${1:-}" in
dependencies)
    # The relay's dependencies and the MQTT mirror's, read from pyproject.toml.
    requirements=$(python -c 'import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print(" ".join(project["dependencies"] + project["optional-dependencies"]["mqtt"]))')
    # shellcheck disable=SC2086 # one word per requirement
    python -m pip install --no-cache-dir --no-compile -c constraints.txt $requirements
    ;;
package)
    python -m pip install --no-cache-dir --no-compile --no-deps .
    python -m pip check
    ;;
*)
    echo "usage: install.sh dependencies|package" >&2
    exit 2
    ;;
esac
