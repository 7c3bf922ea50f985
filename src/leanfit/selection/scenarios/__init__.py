"""The paper's applications of influence-based selection, as reusable experiments."""
