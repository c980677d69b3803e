"""Side-by-side measurements of the kernel runtime against baselines (`python -m benchmarks`)."""
