"""The run's configuration: the RunConfig, its field bounds, the loss terms and the
torch-free choices a run can make."""
