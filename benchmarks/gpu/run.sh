#!/usr/bin/env bash
# Issue 19's GPU run in one command (the device machine's python3 holds torch; resnetlab runs from src/): see run.py.
cd "$(dirname "$0")/../.." && PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" benchmarks/gpu/run.py "$@"
