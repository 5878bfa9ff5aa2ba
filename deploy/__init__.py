"""Deployment material and the local demo (``make demo``)."""
