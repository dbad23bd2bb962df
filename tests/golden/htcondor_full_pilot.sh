#!/bin/bash
# glidein pilot glidein-hpc1-7, started by HTCondor (glidein-client's HTCondor backend).
# Rendered from glidein_client/site/schedulers/templates/htcondor_pilot.sh and the site config
# /etc/glidein/hpc1.toml: change that file, not this script.

# Site set-up (batch.env_setup).
module load python/3.11
export OMP_NUM_THREADS=1

cd /scratch/glidein/pilots/7 || exit 97
# The pilot ends itself before its walltime; should it not, timeout ends it at the walltime
# (exit code 124, read as a timeout) whether or not HTCondor enforces allowed_execute_duration.
# With pilot.signal_grace, the TERM comes that long before the walltime (the warning: jobs that
# end within it finish) and the KILL 60 s after the walltime.
exec timeout --signal=TERM --kill-after=60 129600 glidein-pilot run --token-file /scratch/glidein/pilots/7/token --label 'a b'
