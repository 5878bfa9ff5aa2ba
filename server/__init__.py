"""FedRad consortium side: PKI, SuperLink and fleet proxy launchers, the ServerApp.

Runs on the coordinator's host only; never imported by hospital-side code.
"""
