#!/usr/bin/env bash

#SBATCH -J hpc-imager
#SBATCH -e /shared/run/logs/jobs/hpc-imager-%J.err
#SBATCH -o /shared/run/logs/jobs/hpc-imager-%J.out
#SBATCH -p work
#SBATCH -A astro
#SBATCH -n 1
#SBATCH --cpus-per-task=12
#SBATCH --mem=65536M
#SBATCH -t 06:00:00
#SBATCH --comment=golden
#SBATCH --exclusive
module load casa-deps
export DASK_DISTRIBUTED__WORKER__MEMORY__TARGET=False
export DASK_DISTRIBUTED__WORKER__MEMORY__SPILL=False
export DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE=False
export DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE=0.95
export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{"MALLOC_TRIM_THRESHOLD_": None}'
/opt/venv/bin/python -m distributed.cli.dask_worker tls://<scheduler-address>:<port> --name hpc-imager-worker --nthreads 1 --memory-limit 0.0B --nworkers 12 --nanny --death-timeout 60 --lifetime 21000s --lifetime-stagger 300s --protocol tls:// --tls-ca-file /shared/run/tls/.dask-jobqueue.worker.ca_file.<random> --tls-cert /shared/run/tls/.dask-jobqueue.worker.cert.<random> --tls-key /shared/run/tls/.dask-jobqueue.worker.key.<random>
