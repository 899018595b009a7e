"""Training: the step loop, the stacks it runs in parallel, a study's driver, saving."""
