"""The control plane: FastAPI over the kernel's Flight actions, and the kernel's nanny."""
