"""Where runs are kept: the store and its guarded index, weights and training-state
checkpoints, manifests, locks and repair."""
