"""Pruning methods: short compositions of scores, masks, structure, surgery and training."""
