"""initlab: how weight initialisation, loss choice and input normalisation decide whether a network trains."""
