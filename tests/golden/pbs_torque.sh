#!/bin/bash
#PBS -N glidein-hpc1-7
#PBS -S /bin/bash
#PBS -l nodes=1:ppn=1,mem=2048mb
#PBS -l walltime=02:00:00
#PBS -j oe
#PBS -o /scratch/glidein/pilots/7/pilot.out

#
# glidein pilot glidein-hpc1-7, submitted by glidein-client's PBS backend (Torque).
# Rendered from glidein_client/site/schedulers/templates/pbs.sh and the site config
# /etc/glidein/hpc1.toml: change that file, not this script.

# Site set-up (batch.env_setup).


cd /scratch/glidein/pilots/7 || exit 97
exec glidein-pilot run --token-file /scratch/glidein/pilots/7/token --label 'a b'
