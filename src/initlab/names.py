"""The registry's names, importable without torch.

Every stage validates params.yaml first, and the data stages never need torch (importing it is
about 2 s per process). ``initlab.registry`` holds the functions under these names;
``tests/test_registry.py`` checks that the two agree.
"""

INITIALIZER_NAMES = ("zeros", "ones", "constant", "uniform", "normal", "uniform_rule",
                     "normal_rule", "xavier_uniform", "xavier_normal", "kaiming_uniform",
                     "kaiming_normal", "default")  # fmt: skip
LOSS_NAMES = ("l1", "mse", "bce", "bce_logits", "cross_entropy")
