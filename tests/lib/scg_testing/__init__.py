"""Helpers shared by the test tiers (on pytest's ``pythonpath``; see pyproject.toml).

Nothing here is shipped to users: ``hosts`` finds the ComfyUI checkouts the host and browser tiers run on.
"""
