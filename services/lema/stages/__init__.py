"""LEMA."""
