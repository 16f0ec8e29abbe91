"""The training loop and what it needs: the named steps, teachers, the teacher-output
cache, the probe, the pool of warm teachers and the per-run random generators."""
