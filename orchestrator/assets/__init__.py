"""Model assets for CPU runs: the character tokenizer and a tiny random-init causal LM."""
