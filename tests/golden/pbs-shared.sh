#!/usr/bin/env bash

#PBS -N hpc-imager
#PBS -q work
#PBS -A astro
#PBS -l select=1:ncpus=12:mem=50525mb
#PBS -l walltime=06:00:00
#PBS -e /shared/run/logs/jobs/
#PBS -o /shared/run/logs/jobs/
module load casa-deps
export DASK_DISTRIBUTED__WORKER__MEMORY__TARGET=False
export DASK_DISTRIBUTED__WORKER__MEMORY__SPILL=False
export DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE=False
export DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE=0.95
export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{"MALLOC_TRIM_THRESHOLD_": None}'
/opt/venv/bin/python -m distributed.cli.dask_worker tls://<scheduler-address>:<port> --name hpc-imager-worker --nthreads 1 --memory-limit 4.07GiB --nworkers 12 --nanny --death-timeout 60 --lifetime 21000s --lifetime-stagger 300s --protocol tls:// --tls-ca-file /shared/run/tls/.dask-jobqueue.worker.ca_file.<random> --tls-cert /shared/run/tls/.dask-jobqueue.worker.cert.<random> --tls-key /shared/run/tls/.dask-jobqueue.worker.key.<random>
