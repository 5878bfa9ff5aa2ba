"""The hospital's side of FedRad: the ``fedrad-site`` CLI, local training and evaluation, the ClientApp."""
