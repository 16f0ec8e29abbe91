"""What distillation computes: the losses of every slot and the hybrid, weighting
schemes, feature taps and adapters, gradient shares, and representation similarity (CKA, Gram)."""
