"""``initlab bench``: how fast initlab trains, against what a PyTorch user would write."""
