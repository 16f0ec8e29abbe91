"""Runs in flight: the one submit gate, the durable queue and its plan, the job manager,
workers, and the access-checked actions on runs."""
