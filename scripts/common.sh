# Launch plumbing shared by the training scripts (scripts/next/**, scripts/xtuner/**):
# which launcher starts the processes, and on how many nodes. Sourced, never run.
# The recipe (every training flag) stays in each script; only the launcher is here,
# so a launcher fix lands once. See docs/MultiNode.md.
#
# Environment (torchrun's convention; the defaults are one node):
#   NNODES       number of nodes                                   (1)
#   NODE_RANK    this node's index, 0 .. NNODES-1                  (0)
#   MASTER_ADDR  node 0's address, reachable from every node       (127.0.0.1)
#   MASTER_PORT  a free TCP port on node 0                         (29500)
# Run the same script on every node with the same NNODES / MASTER_ADDR /
# MASTER_PORT and each node's own NODE_RANK (scripts/slurm/ does this).
#
# The alternative, DeepSpeed's launcher: HOSTFILE=path (lines "host slots=8").
# Run the script once, on the first host; deepspeed starts every host over
# passwordless ssh (pdsh). NODE_RANK is then unused; NNODES, if set, keeps the
# first NNODES hosts; MASTER_ADDR, if set, replaces the first host's address.

HOSTFILE=${HOSTFILE:-}
DEEPSPEED_NODES=()                      # what the deepspeed launcher is told, from the user's settings only
[ -n "${NNODES:-}" ] && DEEPSPEED_NODES+=(--num_nodes "$NNODES")
[ -n "${MASTER_ADDR:-}" ] && DEEPSPEED_NODES+=(--master_addr "$MASTER_ADDR")
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}

# launch NPROC_PER_NODE ENTRY [FLAGS...]: start ENTRY on every GPU of every node.
launch() {
    local nproc=$1
    shift
    echo "launch: $NNODES node(s) x $nproc process(es); global batch = nodes x processes x per-device batch x accumulation" >&2
    if [ -n "$HOSTFILE" ]; then
        deepspeed --hostfile "$HOSTFILE" "${DEEPSPEED_NODES[@]}" --master_port "$MASTER_PORT" \
            --num_gpus "$nproc" "$@"
    else
        torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" \
            --master_port "$MASTER_PORT" --nproc_per_node "$nproc" "$@"
    fi
}

# launch_cpu NPROC_PER_NODE ENTRY [FLAGS...]: the CPU scripts (scripts/next/tiny). One process
# in all runs as plain python, as before; more (processes or nodes) go through torchrun (gloo).
launch_cpu() {
    if [ "$NNODES" = 1 ] && [ "$1" = 1 ] && [ -z "$HOSTFILE" ]; then
        shift
        python "$@"
    else
        launch "$@"
    fi
}
