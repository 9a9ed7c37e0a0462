"""Issue 30's trained models written with 2-D layers (made by make_two_d.py)."""
