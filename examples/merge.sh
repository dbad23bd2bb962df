#!/bin/sh
# The example's merge step: a script run in the job's directory (see examples/jobs.toml).
set -eu
python3 -c 'import sys; print(sys.version.split()[0])' > summary.txt
echo "merged on $(hostname)" >> summary.txt
