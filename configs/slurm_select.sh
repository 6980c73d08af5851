#!/bin/bash
# Example SLURM batch job: one panel from a large .h5ad on 2 nodes × 4 GPUs.
# genepanel detects SLURM (SLURM_JOB_ID, SLURM_NTASKS > 1) and starts jax.distributed
# itself: one task per node, each task drives that node's GPUs. Every process reads
# only its own rows of each minibatch; only process 0 writes --out.
#SBATCH --job-name=genepanel
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --signal=TERM@120          # SIGTERM 2 min before the limit: genepanel checkpoints

set -euo pipefail
# pip install "genepanel[gpu]" into this environment first (see README: GPUs and clusters)
source "$HOME/venvs/genepanel/bin/activate"

OUT=runs/atlas_k500
RESUME=""
[ -d "$OUT.partial" ] && RESUME="--resume"   # requeued after preemption: continue

srun genepanel select atlas.h5ad --k 500 --out "$OUT" --config configs/default.yaml \
    --preprocess log1p+standardize --batch-size 1024 --checkpoint-every 5 $RESUME
