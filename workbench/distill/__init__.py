"""What distillation computes: one module of losses per slot (response, feature, relation) and
the hybrid, weighting schemes, feature taps and adapters, the model pair a run distils through,
gradient shares, and representation similarity (CKA, Gram)."""
