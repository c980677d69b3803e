"""`python -m flight_kernel`: a kernel process (see `flight_kernel.process`).

First it ties its life to its parent's (`flight_kernel.parent`), and takes SIGINT before
anything imports polars, which chains the handler it finds at its import
(`flight_kernel.interrupts`)."""

from flight_kernel import interrupts, parent

parent.die_with_parent()
interrupts.install()

from flight_kernel.process import main  # noqa: E402  -- after the handler, on purpose

if __name__ == "__main__":
    main()
