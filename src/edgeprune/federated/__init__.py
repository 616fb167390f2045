"""Federated learning at the edge: split training (split), FedFly migration, Flower rounds, FedAdapt."""
