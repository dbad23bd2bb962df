#!/bin/bash
#BSUB -J glidein-hpc1-7
#BSUB -cwd /scratch/glidein/pilots-meta/glidein-hpc1-7
#BSUB -o /scratch/glidein/pilots-meta/glidein-hpc1-7/pilot.out
#BSUB -e /scratch/glidein/pilots-meta/glidein-hpc1-7/pilot.err
#BSUB -W 1:00
#BSUB -n 4
#BSUB -R "span[hosts=1]"
#BSUB -R "rusage[mem=4096MB]"
#BSUB -M 4096MB
#BSUB -gpu "num=2"
#BSUB -q short
#BSUB -P phy123
#BSUB -R "select[type==X86_64 && model==Skylake]"
#BSUB -B
#
# glidein pilot glidein-hpc1-7, submitted by glidein-client's LSF backend.
# Rendered from glidein_client/site/schedulers/templates/lsf.sh and the site config
# /etc/glidein/hpc1.toml: change that file, not this script.

# Site set-up (batch.env_setup).
module load python/3.11

exec /opt/glidein/bin/python -m glidein_client.pilot run --site hpc1
