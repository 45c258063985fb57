#!/bin/bash
# The offline package index of the python:3.11-slim stand-in: every wheel the project's Dockerfile installs
# (`pip install '.[postgres]'`, built with setuptools), downloaded with the machine's pip (its cache makes a
# second run quick). Usage: wheels.sh DIR [PROJECT_DIR]
set -euo pipefail
out=${1:?usage: wheels.sh DIR [PROJECT_DIR]}
project=${2:-$(cd "$(dirname "$0")/../.." && pwd)}
mkdir -p "$out"
# the stand-in runs Debian bookworm's CPython 3.11 (glibc 2.36); a wheel for a newer glibc would not install there
python3 -m pip download -q --disable-pip-version-check -d "$out" --python-version 3.11 --only-binary=:all: \
  --platform "manylinux_2_36_$(uname -m)" --platform "manylinux_2_17_$(uname -m)" --platform "manylinux2014_$(uname -m)" \
  "$project[postgres]" 'setuptools>=69' wheel
rm -f "$out"/cmglab-*   # the project itself is built inside the image, from its sources
ls "$out"/*.whl > /dev/null
