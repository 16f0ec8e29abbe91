"""What a trained student learned, per image and per class, beyond its layers' similarity: its
embeddings on a fixed test subset, its disagreements with the teacher and where it looks."""
