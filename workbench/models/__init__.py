"""Model architectures: the registry (torchvision adapted to small inputs, small
students) and the CIFAR families of the distillation literature."""
