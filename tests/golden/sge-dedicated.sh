#!/usr/bin/env bash

#$ -N hpc-imager
#$ -q work
#$ -P astro
#$ -l h_vmem=448M,mem_free=5462M
#$ -l h_rt=06:00:00
#$ -e /shared/run/logs/jobs/
#$ -o /shared/run/logs/jobs/
#$ -cwd
#$ -j y
#$ -pe smp 12
module load casa-deps
export DASK_DISTRIBUTED__WORKER__MEMORY__TARGET=False
export DASK_DISTRIBUTED__WORKER__MEMORY__SPILL=False
export DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE=False
export DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE=0.95
export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON='{"MALLOC_TRIM_THRESHOLD_": None}'
export MALLOC_ARENA_MAX=2
/opt/venv/bin/python -m distributed.cli.dask_worker tls://<scheduler-address>:<port> --name hpc-imager-worker --nthreads 1 --memory-limit 0.0B --nworkers 12 --nanny --death-timeout 60 --lifetime 21000s --lifetime-stagger 300s --protocol tls:// --tls-ca-file /shared/run/tls/.dask-jobqueue.worker.ca_file.<random> --tls-cert /shared/run/tls/.dask-jobqueue.worker.cert.<random> --tls-key /shared/run/tls/.dask-jobqueue.worker.key.<random>
