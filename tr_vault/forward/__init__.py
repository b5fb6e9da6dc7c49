"""Store-and-forward: every call relayed to the configured services until each confirms."""
