"""Saliency maps as stored data (store) and the measures of whether a map can be trusted (trust)."""
