#!/bin/bash
#SBATCH --job-name=glidein-hpc1-7
#SBATCH --comment=glidein
#SBATCH --chdir=/scratch/glidein/pilots/7
#SBATCH --output=/scratch/glidein/pilots/7/pilot.out
#SBATCH --error=/scratch/glidein/pilots/7/pilot.err
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --time=0-02:00:00
#SBATCH --cpus-per-task=1
#SBATCH --mem=2048M
#
# glidein pilot glidein-hpc1-7, submitted by glidein-client's Slurm backend.
# Rendered from glidein_client/site/schedulers/templates/slurm.sh and the site config
# /etc/glidein/hpc1.toml: change that file, not this script.

# Site set-up (batch.env_setup).


exec glidein-pilot run --token-file /scratch/glidein/pilots/7/token
