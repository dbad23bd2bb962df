#!/bin/bash
#PBS -N glidein-hpc1-7
#PBS -S /bin/bash
#PBS -l select=1:ncpus=8:mem=16384mb:ngpus=2:model=skylake
#PBS -l walltime=36:00:00
#PBS -j oe
#PBS -o /scratch/glidein/pilots/7/pilot.out
#PBS -q gpu
#PBS -A phy123
#PBS -l place=excl
#PBS -m n
#PBS -W umask=022
#
# glidein pilot glidein-hpc1-7, submitted by glidein-client's PBS backend (PBS Pro).
# Rendered from glidein_client/site/schedulers/templates/pbs.sh and the site config
# /etc/glidein/hpc1.toml: change that file, not this script.

# Site set-up (batch.env_setup).
module load python/3.11
export OMP_NUM_THREADS=1

cd /scratch/glidein/pilots/7 || exit 97
exec glidein-pilot run --token-file /scratch/glidein/pilots/7/token --label 'a b'
