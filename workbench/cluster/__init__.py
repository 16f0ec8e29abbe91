"""Queued runs executed as tasks on a Ray cluster (``python -m workbench worker --executor ray``).

The store stays on the head. ``executor`` claims runs there through the same fair queue as every
executor and ships each one as a Ray task (``task``), which trains it against a scratch store on
its node (``payload``: what travels, both ways) and streams its progress back through a relay
actor on the head (``relay``); the executor alone writes the head's store. ``connect`` opens the
cluster with a one-line error when it cannot be reached.
"""
