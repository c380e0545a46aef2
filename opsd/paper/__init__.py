"""Paper reproduction: run records, the paper's tables and figures, the CPU figure campaign."""
