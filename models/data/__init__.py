"""Data for each family, made in code from what is on the machine (no downloads at run time)."""
