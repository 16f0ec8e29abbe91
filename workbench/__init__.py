"""KD Workbench: a visual lab for knowledge distillation."""
