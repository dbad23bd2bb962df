#!/bin/bash
#SBATCH --job-name=glidein-hpc1-42
#SBATCH --comment=glidein
#SBATCH --chdir="/scratch/my site/100%/pilot-42"
#SBATCH --output="/scratch/my site/100%%/pilot-42/pilot.out"
#SBATCH --error="/scratch/my site/100%%/pilot-42/pilot.err"
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --time=1-02:24:00
#SBATCH --cpus-per-task=8
#SBATCH --mem=16384M
#SBATCH --gres=gpu:2
#SBATCH --partition=gpu
#SBATCH --account=phys-123
#SBATCH --qos=long
#SBATCH --constraint="a100&ib"
#SBATCH --mail-type=NONE
#SBATCH --signal=B:TERM@120
#SBATCH --licenses=scratch:1
#
# glidein pilot glidein-hpc1-42, submitted by glidein-client's Slurm backend.
# Rendered from glidein_client/site/schedulers/templates/slurm.sh and the site config
# /etc/glidein/hpc1.toml: change that file, not this script.

# Site set-up (batch.env_setup).
module load python/3.11
export GLIDEIN_SITE_TAG="hpc1 full"

exec /opt/python/bin/python3 -m glidein_client.pilot run --label 'it'"'"'s a test'
