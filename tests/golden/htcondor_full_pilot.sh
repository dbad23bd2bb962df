#!/bin/bash
# glidein pilot glidein-hpc1-7, started by HTCondor (glidein-client's HTCondor backend).
# Rendered from glidein_client/site/schedulers/templates/htcondor_pilot.sh and the site config
# /etc/glidein/hpc1.toml: change that file, not this script.

# Site set-up (batch.env_setup).
module load python/3.11
export OMP_NUM_THREADS=1

cd /scratch/glidein/pilots/7 || exit 97
exec glidein-pilot run --token-file /scratch/glidein/pilots/7/token --label 'a b'
