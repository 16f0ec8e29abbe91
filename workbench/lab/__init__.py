"""A shared instance: its settings, who is asking (identity) and what they may do (access)."""
