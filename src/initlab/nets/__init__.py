"""The maths: initialisers and losses by name, the stacked MLP, its heads, optimisers, diagnostics."""
